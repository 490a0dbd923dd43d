"""The cellwatch panel (Streamlit) and printable reports.

Start the panel with `cellwatch panel --data DIR --port P`, or from code with `app_main(data_dir, port)`
(blocking) or `start_panel(data_dir, port)` + `wait_ready(port)` (a child process). Streamlit is not
imported here, so importing the package stays cheap.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

APP_FILE = Path(__file__).with_name("app.py")


Pathish = str | os.PathLike[str]


def panel_command(data_dir: Pathish, port: int = 8501, address: str = "127.0.0.1", *,
                  history: Pathish | None = None, mlflow_db: Pathish | None = None) -> list[str]:
    """The `streamlit run` command line that serves the panel for a data folder (and an older history)."""
    extra = [*(["--history", str(Path(history).resolve())] if history else []),
             *(["--mlflow", str(Path(mlflow_db).resolve())] if mlflow_db else [])]
    # -P: a folder in the working directory named like a package (e.g. a data folder's plant/) must not shadow it
    return [sys.executable, "-P", "-m", "streamlit", "run", str(APP_FILE),
            "--server.headless", "true", "--server.port", str(port), "--server.address", address,
            "--browser.gatherUsageStats", "false",
            "--client.showErrorDetails", "none",  # users get our messages, never a traceback
            "--client.toolbarMode", "viewer",
            "--server.fileWatcherType", "none", "--server.runOnSave", "false",  # no source watching in production
            "--theme.base", "light",
            "--", "--data", str(Path(data_dir).resolve()), *extra]


def app_main(data_dir: Pathish, port: int = 8501, address: str = "127.0.0.1", *, history: Pathish | None = None,
             mlflow_db: Pathish | None = None) -> int:
    """Serve the panel in the foreground until it is stopped; returns Streamlit's exit code."""
    return subprocess.call(panel_command(data_dir, port, address, history=history, mlflow_db=mlflow_db))


def start_panel(data_dir: Pathish, port: int, address: str = "127.0.0.1", *, history: Pathish | None = None,
                mlflow_db: Pathish | None = None, log: Pathish | None = None) -> subprocess.Popen[bytes]:
    """Start the panel as a child process (output to `log`, or discarded); see wait_ready."""
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115 - the child keeps it
    return subprocess.Popen(panel_command(data_dir, port, address, history=history, mlflow_db=mlflow_db),
                            stdout=out, stderr=subprocess.STDOUT)


def wait_ready(port: int, timeout_s: float = 60.0, address: str = "127.0.0.1",
               proc: subprocess.Popen[bytes] | None = None) -> float:
    """Poll Streamlit's health endpoint until it answers; returns the seconds waited (TimeoutError if never)."""
    t0 = time.monotonic()
    url = f"http://{address}:{port}/_stcore/health"
    while time.monotonic() - t0 < timeout_s:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the panel exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return time.monotonic() - t0
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"the panel did not answer on {url} within {timeout_s:g} s")
