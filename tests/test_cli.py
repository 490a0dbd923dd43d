"""The `cellwatch` command: help everywhere, one-line errors with a non-zero exit, a small end-to-end run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from plant.site import demo_site_text

CLI = [sys.executable, "-m", "cellwatch.cli"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CELLWATCH_DEBUG"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


@pytest.mark.parametrize("args", [[], ["simulate"], ["summary"], ["site"], ["site", "check"], ["plant"],
                                  ["plant", "live"], ["demo"]])
def test_help_on_every_command(args):
    res = run(*args, "--help")
    assert res.returncode == 0, res.stderr
    assert "Usage:" in res.stdout and "--help" in res.stdout


def assert_one_line_error(res: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith(("Usage:", "Try "))]
    assert len(lines) == 1, res.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_missing_site_file_is_one_line(tmp_path):
    assert_one_line_error(run("site", "check", str(tmp_path / "nope.toml")), "nope.toml", "cannot read")


def test_malformed_site_names_file_key_and_value(tmp_path):
    bad = tmp_path / "plant.toml"
    bad.write_text(demo_site_text().replace('grade = "C"', 'grade = "Z"', 1))
    assert_one_line_error(run("site", "check", str(bad)), "plant.toml", "rooms[2].grade", "'Z'")


def test_bad_injection_and_taken_folder_are_refused(tmp_path):
    assert_one_line_error(run("simulate", "-n", "1", "--out", str(tmp_path / "x"), "--inject", "nonsense"),
                          "--inject", "KIND:TARGET@START+HOURS")
    assert_one_line_error(run("simulate", "-n", "1", "--out", str(tmp_path / "y"), "--inject",
                              "meteor_strike:BR01@2025-01-07T00:00+2"), "meteor_strike")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("do not lose me")
    assert_one_line_error(run("simulate", "-n", "1", "--out", str(taken)), "already holds data")
    assert (taken / "keep.txt").read_text() == "do not lose me"


def test_simulate_then_summary(tmp_path):
    out = tmp_path / "hist"
    res = run("simulate", "-n", "3", "-s", "2", "--out", str(out), "--inject",
              "temperature_excursion:BR01@2025-01-10T00:00+3")
    assert res.returncode == 0, res.stderr
    assert "3 batches" in res.stdout
    res = run("summary", "-d", str(out))
    assert res.returncode == 0, res.stderr
    assert "batches: 3" in res.stdout and "temperature_excursion" in res.stdout
    assert "harvest viable cells" in res.stdout
