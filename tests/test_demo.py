"""`cellwatch demo` for real on a tiny configuration: it comes up (panel and ingest answer), the setpoint
recommender passes over the running batches, Ctrl-C stops every process it started with exit code 0, and a second
run reuses the history, models, recommender and users and starts faster.

Both runs take about 2-3 minutes on two busy cores (the first generates 24 batches and trains with one trial).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

BANNER = "cellwatch demo is up"


def _children() -> dict[int, int]:
    """pid -> parent pid of every process on the machine (from /proc)."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            out[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def descendants(pid: int) -> set[int]:
    parents = _children()
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for child, parent in parents.items():
            if parent == p and child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def answers(url: str) -> int | None:
    """The HTTP status of url, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None


def run_demo(data: Path, log: Path, timeout_s: float) -> tuple[float, str]:
    """Start the demo, wait for its banner, check the services, Ctrl-C it; (seconds to banner, its output)."""
    argv = [sys.executable, "-m", "cellwatch.cli", "demo", "--data", str(data), "--batches", "24", "--trials", "1",
            "--preroll-h", "0.5", "--panel-port", "0", "--mlflow-port", "0", "--ingest-port", "0",
            "--alarms-every", "5", "--recommend-every", "0.1"]
    t0 = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        while BANNER not in log.read_text():
            assert proc.poll() is None, f"the demo exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() - t0 < timeout_s, f"no banner in {timeout_s} s:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        took = time.monotonic() - t0
        time.sleep(1)  # the rest of the banner
        text = log.read_text()
        panel = re.search(r"panel\s+(http://\S+)", text).group(1)
        health = re.search(r"health: (http://\S+)\)", text).group(1)
        assert answers(panel) == 200
        assert answers(panel + "_stcore/health") == 200
        assert answers(health) == 200
        time.sleep(6)  # an alarm-engine run starts meanwhile: stopping must take it down too
        passes = lambda: (data / "logs" / "recommend.log").read_text().rsplit("\n==== ", 1)[-1]  # this run's  # noqa: E731
        deadline = time.monotonic() + 60
        while "new recommendation(s) stored" not in passes() and time.monotonic() < deadline:
            time.sleep(1)  # the recommender's first pass (half an hour of preroll: every batch before its window)
        assert "new recommendation(s) stored" in passes(), passes()[-3000:]
        kids = descendants(proc.pid)
        assert len(kids) >= 4, kids  # plant, ingest, panel (+ streamlit), mlflow (+ its workers)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(90) == 0, log.read_text()[-3000:]
        deadline = time.monotonic() + 10
        while any(alive(k) for k in kids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [k for k in kids if alive(k)], "processes left behind after Ctrl-C"
        return took, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(600)
def test_demo_comes_up_stops_cleanly_and_reuses(tmp_path):
    data = tmp_path / "demo"
    first, out1 = run_demo(data, tmp_path / "first.log", timeout_s=400)
    assert "first run: generating 24 batches" in out1 and "trained and registered" in out1
    assert "first run: training the setpoint recommender" in out1 and (data / "recommender" / "version.json").exists()
    assert "the setpoint recommender runs over the running batches" in out1
    assert "outside_window" in (data / "logs" / "recommend.log").read_text()
    assert "created the demo users" in out1
    creds = (data / "demo-users.txt").read_text()
    assert {"operator", "engineer", "qa", "scientist"} <= {line.split("\t")[0] for line in creds.splitlines()}
    assert (data / "demo-users.txt").stat().st_mode & 0o077 == 0
    assert (data / "plant" / "historian").exists()
    second, out2 = run_demo(data, tmp_path / "second.log", timeout_s=240)
    assert "reusing the history" in out2 and "reusing the models" in out2 and "reusing the demo users" in out2
    assert "reusing the setpoint recommender recommender-" in out2
    assert "training" not in out2 and "generating" not in out2
    assert (data / "demo-users.txt").read_text() == creds
    assert second < first - 20, (first, second)
