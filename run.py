#!/usr/bin/env python3
"""Set-up and entry point on a machine with only Python 3.11+ and pip.

    python3 run.py demo      # the demo plant, end to end, on embedded defaults
    python3 run.py test      # the test suite (what CI runs)

The first call creates .venv/ and installs cellwatch with its test extra into it; later calls
reinstall only when pyproject.toml changed. Anything after the command is passed on, e.g.
`python3 run.py test -k historian` or `python3 run.py cellwatch simulate --batches 50`;
`python3 run.py mlflow run . -e train ...` runs MLflow with the environment's python first on PATH.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".cellwatch-installed"


def _ensure_env() -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"cellwatch needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == want:
        return
    if not (BIN / "python").exists():
        print("creating .venv ...", file=sys.stderr)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("installing cellwatch and its dependencies into .venv (first run takes a few minutes) ...",
          file=sys.stderr)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{ROOT}[test]"], check=True)
    STAMP.write_text(want)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if len(sys.argv) >= 2 else 2)
    command, args = sys.argv[1], sys.argv[2:]
    _ensure_env()
    os.chdir(ROOT)
    if command == "demo":
        argv = [str(BIN / "cellwatch"), "demo", *args]
    elif command == "test":
        argv = [str(BIN / "python"), "-m", "pytest", *args]
    elif command in ("cellwatch", "mlflow"):
        argv = [str(BIN / command), *args]
    else:
        sys.exit(f"unknown command {command!r}: use demo, test, cellwatch or mlflow")
    # Children (MLflow project commands, the demo's services) must find this environment's python first.
    os.environ["PATH"] = os.pathsep.join([str(BIN), os.environ.get("PATH", "")])
    os.environ["VIRTUAL_ENV"] = str(VENV)
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
