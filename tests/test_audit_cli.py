"""`cellwatch users` and `cellwatch audit`: set-up, review and release, and verify naming tampering."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner, Result

from plant.audit import AuditTrail
from plant.records import BatchRecord, Records, coi_id

CLI = [sys.executable, "-m", "cellwatch.cli"]
T0 = datetime(2025, 3, 1, 8, 0, tzinfo=timezone.utc)
BATCH = coi_id("DEMO", 9, b"k" * 16)


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CELLWATCH_DEBUG", "CELLWATCH_DATA")}
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, text=True, timeout=120,
                          env=env, check=False)


@pytest.mark.parametrize("args", [["users"], ["users", "create"], ["users", "reset-password"],
                                  ["audit"], ["audit", "verify"], ["audit", "review"],
                                  ["audit", "export"]])
def test_help_and_no_password_on_argv(args: list[str]) -> None:
    res = cw(*args, "--help")
    assert res.exit_code == 0 and "Usage:" in res.output, res.output
    assert "--password " not in res.output and "--password=" not in res.output


IDENTITY = Path(__file__).resolve().parent / "identity_fast.toml"


def cw(*args: str, stdin: str = "") -> Result:
    """The command in-process (the subprocess start-up costs seconds on a busy machine)."""
    from cellwatch.cli import cli

    # a site's identity file, here with small argon2id costs so the test stays fast
    return CliRunner(env={"CELLWATCH_IDENTITY": str(IDENTITY)}).invoke(cli, list(args), input=stdin)


def test_set_up_review_release_and_tamper(tmp_path: Path) -> None:
    d = str(tmp_path)
    res = cw("users", "init", "-d", d, "--username", "root", "--full-name", "Ada Admin",
             "--password-stdin", stdin="s3cret-horse-1\n")
    assert res.exit_code == 0, res.output
    res = cw("users", "create", "quinn", "-d", d, "--full-name", "Quinn Q. Assurance",
             "--role", "qa", "--as", "root", "--password-stdin",
             stdin="s3cret-horse-1\nbattery-staple-9\n")
    assert res.exit_code == 0, res.output
    res = cw("users", "create", "eve", "-d", d, "--full-name", "Eve", "--role", "admin",
             "--as", "root", "--password-stdin", stdin="guess\nx\n")
    assert res.exit_code == 2 and "refused: authentication failed for 'root'" in res.stderr
    assert "Quinn Q. Assurance" in cw("users", "list", "-d", d).stdout

    with Records.open(tmp_path / "records.db") as records:
        records.add_batches([BatchRecord(BATCH, "BR01", "DEMO", "CART-v1", "production", T0,
                                         T0 + timedelta(days=10), T0 + timedelta(days=10),
                                         "harvested")])
        AuditTrail(records).append("olga", "write", "setpoint", f"{BATCH}/BR01.TempSP",
                                   {"value": 37.0}, {"value": 36.5}, "per SOP-12")

    qa = {"stdin": "battery-staple-9\n"}
    res = cw("audit", "release", BATCH, "-d", d, "--as", "quinn", "--password-stdin", **qa)
    assert res.exit_code == 2 and "not reviewed by QA" in res.stderr
    res = cw("audit", "review", BATCH, "-d", d, "--as", "quinn", "--yes", "--password-stdin", **qa)
    assert res.exit_code == 0, res.output
    assert "1 audit entries for batch" in res.stdout
    assert "Quinn Q. Assurance (quinn) - reviewed" in res.stdout
    res = cw("audit", "release", BATCH, "-d", d, "--as", "quinn", "--password-stdin", **qa)
    assert res.exit_code == 0 and "released: Quinn Q. Assurance (quinn)" in res.stdout, res.output

    res = cw("audit", "search", "-d", d, "--entity", "batch")
    assert f"quinn released batch:{BATCH}" in res.stdout, res.stdout
    head = cw("audit", "head", "-d", d).stdout.strip()
    res = cw("audit", "export", str(tmp_path / "trail.csv"), "-d", d)
    assert res.exit_code == 0 and "sha256" in res.stdout, res.output
    assert pl.read_csv(tmp_path / "trail.csv").height == int(head.split(":")[0])
    res = cw("audit", "verify", "-d", d, "--anchor", head)
    assert res.exit_code == 0 and res.stdout.startswith("audit trail OK"), res.output

    con = sqlite3.connect(tmp_path / "records.db", isolation_level=None)
    con.execute("DROP TRIGGER audit_trail_no_update")
    con.execute("UPDATE audit_trail SET reason = 'per nothing' WHERE reason = 'per SOP-12'")
    (seq,) = con.execute("SELECT seq FROM audit_trail WHERE reason = 'per nothing'").fetchone()
    con.execute("UPDATE users SET role = 'admin' WHERE username = 'quinn'")
    res = run("audit", "verify", "-d", d)  # the real command, as an auditor runs it
    assert res.returncode == 1 and "FAILED verification" in res.stderr
    assert f"PROBLEM: entry {seq}: content altered" in res.stdout
    assert ("PROBLEM: append-only trigger audit_trail_no_update on audit_trail is missing"
            in res.stdout)
    assert "PROBLEM: user 'quinn': role is 'admin' but the audit trail says 'qa'" in res.stdout
