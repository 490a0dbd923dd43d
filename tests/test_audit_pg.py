"""The audit trail on PostgreSQL: the same code, PostgreSQL triggers, advisory-lock serialised appends.

Starts a throwaway server (unix socket only) when PostgreSQL's binaries and psycopg are present;
skipped otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

psycopg = pytest.importorskip("psycopg")

from plant.audit import AuditTrail
from plant.records import Records

REPO = Path(__file__).resolve().parents[1]


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root; CI and dev machines run tests as root."""
    if os.geteuid() != 0:
        return cmd
    if shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: cannot start PostgreSQL")
    return ["runuser", "-u", "postgres", "--", *cmd]


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    pg_ctl = shutil.which("pg_ctl") or shutil.which("pg_ctlcluster")
    if pg_ctl is None or pg_ctl.endswith("pg_ctlcluster"):
        pytest.skip("PostgreSQL server binaries (pg_ctl) not installed")
    bindir = Path(pg_ctl).resolve().parent
    root = Path(tempfile.mkdtemp(prefix="cw-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data = root / "data"
    init = subprocess.run(_as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", "postgres",
                                        "--auth=trust", "-E", "UTF8"]),
                          capture_output=True, text=True)
    if init.returncode != 0:
        pytest.skip(f"initdb failed: {init.stderr.strip()[:200]}")
    opts = f"-c listen_addresses='' -c unix_socket_directories={root} -c fsync=off"
    start = subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-o", opts,
                                         "-l", str(root / "log"), "-w", "start"]),
                           capture_output=True, text=True)
    if start.returncode != 0:
        pytest.skip(f"PostgreSQL did not start: {start.stderr.strip()[:200]}")
    try:
        yield f"postgresql+psycopg://postgres@/postgres?host={root}"
    finally:
        subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                                     "stop"]), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def trail(pg_url: str) -> Iterator[AuditTrail]:
    with psycopg.connect(pg_url.replace("postgresql+psycopg", "postgresql"),
                         autocommit=True) as con:
        con.execute("DROP SCHEMA public CASCADE")
        con.execute("CREATE SCHEMA public")
    with Records(pg_url) as records:
        audit = AuditTrail(records)
        for i in range(1, 5):
            audit.append("alice", "write", "setpoint", f"B{i}", {"value": i}, {"value": i + 1},
                         f"reason {i}")
        yield audit


def raw(url: str):  # type: ignore[no-untyped-def]
    return psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True)


@pytest.mark.parametrize("sql,op", [("UPDATE audit_trail SET actor = 'mallory'", "UPDATE"),
                                    ("DELETE FROM audit_trail WHERE seq = 2", "DELETE"),
                                    ("TRUNCATE audit_trail", "TRUNCATE")])
def test_pg_triggers_refuse(trail: AuditTrail, pg_url: str, sql: str, op: str) -> None:
    with raw(pg_url) as con, pytest.raises(psycopg.errors.InsufficientPrivilege,
                                           match=f"audit_trail is append-only: {op} refused"):
        con.execute(sql)
    assert trail.verify().ok and trail.entries().height == 4


def test_pg_tampering_is_named(trail: AuditTrail, pg_url: str) -> None:
    with raw(pg_url) as con:
        con.execute("DROP TRIGGER audit_trail_no_update ON audit_trail")
        con.execute("DROP TRIGGER audit_trail_no_delete ON audit_trail")
        con.execute("UPDATE audit_trail SET reason = 'typo' WHERE seq = 2")
        con.execute("DELETE FROM audit_trail WHERE seq = 4")
    problems = trail.verify().problems
    assert problems[:2] == [
        "append-only trigger audit_trail_no_update on audit_trail is missing (dropped?)",
        "append-only trigger audit_trail_no_delete on audit_trail is missing (dropped?)"]
    assert problems[2].startswith("entry 2: content altered")
    assert problems[3] == ("entry 4 missing (deleted): the chain head is entry 4, "
                           "the newest entry is 3")


def test_pg_two_processes_keep_one_chain(trail: AuditTrail, pg_url: str, tmp_path: Path) -> None:
    go, n = tmp_path / "go", 100
    procs = [subprocess.Popen([sys.executable, str(REPO / "tests" / "audit_child.py"), pg_url,
                               name, str(n), str(go)], stdout=subprocess.PIPE, text=True, cwd=REPO)
             for name in ("writer-a", "writer-b")]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "READY"
    t0 = time.perf_counter()
    go.touch()
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(f"DONE {n}" in o for o in outs)
    frame = trail.entries()
    assert trail.verify().ok
    assert frame["seq"].to_list() == list(range(1, 2 * n + 5))
    switches = int((frame["actor"] != frame["actor"].shift(1)).sum())
    assert switches >= 10
    print(f"\nPostgreSQL, 2 processes x {n}: {2 * n / (time.perf_counter() - t0):.0f} appends/s")


def test_pg_users_sign_and_lock(trail: AuditTrail, pg_url: str) -> None:
    from argon2 import PasswordHasher

    from plant.identity import LocalPasswords
    from plant.users import AccountLocked, AuthError, Users

    with Records(pg_url) as records:
        users = Users(records, trail, identity=LocalPasswords(PasswordHasher(1, 8192, 1)))
        users.init_admin("root", "Ada Admin", "correct-horse-1")
        users.create("root", "quinn", "Quinn QA", "qa", "battery-staple-9")
        sig = users.sign("quinn", "battery-staple-9", "approved", "deviation", "DEV-1", {"a": 1},
                         permission="deviation.approve")
        assert users.signatures("deviation") == [sig] and sig.ts.tzinfo is not None
        for _ in range(4):
            with pytest.raises(AuthError):
                users.sign("quinn", "nope", "approved", "deviation", "DEV-1", {"a": 1})
        with pytest.raises(AccountLocked):
            users.authenticate("quinn", "nope")
        with raw(pg_url) as con, pytest.raises(psycopg.errors.InsufficientPrivilege):
            con.execute("DELETE FROM signatures")
        assert trail.verify().ok
