"""Audit trail: round trips, search, export, append-only triggers, tamper detection, two writers."""

from __future__ import annotations

import math
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest

from plant.audit import (
    AUDIT_SCHEMA,
    GENESIS,
    AuditTrail,
    canonical_json,
    entry_hash,
    record_hash,
)
from plant.records import Records

REPO = Path(__file__).resolve().parents[1]
CEST = timezone(timedelta(hours=2))


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "records.db"


@pytest.fixture
def trail(db: Path):
    with Records.open(db) as records:
        audit = AuditTrail(records)
        for i in range(1, 7):
            audit.append("alice" if i % 2 else "bob", "write", "setpoint", f"B{i % 3}",
                         {"value": 36.0 + i}, {"value": 37.0 + i}, f"reason {i}")
        yield audit


def raw(db: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection, as an attacker with file access would use."""
    return sqlite3.connect(db, isolation_level=None)


def drop_triggers(db: Path) -> sqlite3.Connection:
    con = raw(db)
    con.execute("DROP TRIGGER audit_trail_no_update")
    con.execute("DROP TRIGGER audit_trail_no_delete")
    return con


def problems(audit: AuditTrail) -> list[str]:
    result = audit.verify()
    assert not result.ok
    return [p for p in result.problems if "trigger" not in p]


# -- canonical JSON ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rec:
    name: str
    ts: datetime
    tags: frozenset[str]


def test_record_hash_is_canonical() -> None:
    t = datetime(2025, 3, 1, 10, 0, tzinfo=CEST)
    assert record_hash({"a": 1, "b": [1, 2]}) == record_hash({"b": [1, 2], "a": 1})
    assert record_hash(Rec("x", t, frozenset({"b", "a"}))) == record_hash(
        {"name": "x", "ts": t.astimezone(timezone.utc), "tags": ["a", "b"]})
    assert canonical_json({"v": math.nan, "w": 1.5}) == '{"v":"nan","w":1.5}'
    assert record_hash({"a": 1}) != record_hash({"a": 2})
    with pytest.raises(ValueError, match="naive"):
        record_hash({"ts": datetime(2025, 1, 1)})
    with pytest.raises(TypeError, match=r"value\['x'\].*object"):
        record_hash({"x": object()})


# -- appending and reading --------------------------------------------------------------------


def test_append_round_trip(trail: AuditTrail) -> None:
    e = trail.append("carol", "close", "deviation", "DEV-7", {"state": "open"},
                     {"state": "closed", "at": datetime(2025, 3, 1, 10, tzinfo=CEST)}, "CAPA done")
    assert e.seq == 7 and e.ts.tzinfo is timezone.utc
    assert e.new == '{"at":"2025-03-01T08:00:00.000000+00:00","state":"closed"}'
    assert trail.get(7) == e
    assert e.prev_hash == trail.get(6).hash
    assert e.hash == entry_hash(7, e.ts, "carol", "close", "deviation", "DEV-7", e.old, e.new,
                                "CAPA done", e.prev_hash)
    assert e.hash == record_hash([7, e.ts, "carol", "close", "deviation", "DEV-7", e.old, e.new,
                                  "CAPA done", e.prev_hash])  # the spec, for outside verifiers
    assert trail.get(1).prev_hash == GENESIS
    assert trail.head() == (7, e.hash)
    with pytest.raises(ValueError, match="actor must be a non-empty string"):
        trail.append(" ", "close", "deviation", "DEV-7")
    with pytest.raises(KeyError, match="no audit entry 99"):
        trail.get(99)


def test_entries_filters_and_search(trail: AuditTrail) -> None:
    trail.append("carol", "note", "batch", "B1", reason="100% done_ok")
    all_ = trail.entries()
    assert all_.schema == pl.Schema(AUDIT_SCHEMA) and all_["seq"].to_list() == list(range(1, 8))
    assert trail.entries(actor="bob")["seq"].to_list() == [2, 4, 6]
    assert trail.entries(entity="setpoint", entity_id="B1")["seq"].to_list() == [1, 4]
    assert trail.entries(text="REASON 5")["seq"].to_list() == [5]
    assert trail.entries(text="% done_")["seq"].to_list() == [7]  # wildcards are literal
    assert trail.entries(text="%d")["seq"].to_list() == []
    assert trail.entries(text='"value":39')["seq"].to_list() == [2, 3]
    t3 = all_["ts"][2]
    assert trail.entries(since=t3, until=all_["ts"][4])["seq"].to_list() == [3, 4]
    with pytest.raises(ValueError, match="since must be timezone-aware"):
        trail.entries(since=datetime(2025, 1, 1))


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_export(trail: AuditTrail, tmp_path: Path, suffix: str) -> None:
    out = trail.export(tmp_path / f"x/audit.{suffix}", actor="alice")
    back = pl.read_csv(out) if suffix == "csv" else pl.read_parquet(out)
    assert back["seq"].to_list() == [1, 3, 5]
    if suffix == "parquet":
        assert back.equals(trail.entries(actor="alice"))
    with pytest.raises(ValueError, match="csv or parquet"):
        trail.export(tmp_path / "audit.xlsx")


# -- append-only: the database refuses changes ------------------------------------------------


@pytest.mark.parametrize("sql", ["UPDATE audit_trail SET actor = 'mallory' WHERE seq = 2",
                                 "DELETE FROM audit_trail WHERE seq = 2",
                                 "DELETE FROM audit_trail"])
def test_triggers_refuse_update_and_delete(trail: AuditTrail, db: Path, sql: str) -> None:
    with pytest.raises(sqlite3.DatabaseError, match="audit_trail is append-only"):
        raw(db).execute(sql)
    assert trail.verify().ok and trail.entries().height == 6


def test_verify_reports_dropped_triggers(trail: AuditTrail, db: Path) -> None:
    drop_triggers(db)
    result = trail.verify()
    assert not result.ok
    assert result.problems == [
        "append-only trigger audit_trail_no_update on audit_trail is missing (dropped?)",
        "append-only trigger audit_trail_no_delete on audit_trail is missing (dropped?)"]


# -- tamper detection (triggers dropped, or the file edited) ----------------------------------


@pytest.mark.parametrize("column,value", [("actor", "'mallory'"), ("new", "'{\"value\":1}'"),
                                          ("reason", "'typo'"),
                                          ("ts", "'2020-01-01 00:00:00.000000'")])
def test_altered_entry_is_named(trail: AuditTrail, db: Path, column: str, value: str) -> None:
    drop_triggers(db).execute(f"UPDATE audit_trail SET {column} = {value} WHERE seq = 3")
    found = problems(trail)
    assert len(found) == 1 and found[0].startswith("entry 3: content altered"), found


def test_altered_and_rehashed_entry_breaks_the_next_link(trail: AuditTrail, db: Path) -> None:
    e = trail.get(3)
    forged = entry_hash(3, e.ts, "mallory", e.action, e.entity, e.entity_id, e.old, e.new,
                        e.reason, e.prev_hash)
    drop_triggers(db).execute("UPDATE audit_trail SET actor = 'mallory', hash = ? WHERE seq = 3",
                              (forged,))
    assert problems(trail) == ["entry 4: prev_hash does not match entry 3's hash "
                               "(entry 3 altered and re-hashed, or entries re-ordered)"]


def test_deleted_entries_are_named(trail: AuditTrail, db: Path) -> None:
    drop_triggers(db).execute("DELETE FROM audit_trail WHERE seq IN (2, 3)")
    assert problems(trail) == ["entries 2..3 missing (deleted): entry 4 follows entry 1"]


def test_deleted_newest_entry_is_named(trail: AuditTrail, db: Path) -> None:
    drop_triggers(db).execute("DELETE FROM audit_trail WHERE seq = 6")
    assert problems(trail) == ["entry 6 missing (deleted): the chain head is entry 6, "
                               "the newest entry is 5"]
    # appending afterwards keeps the evidence: the chain head, not the newest row, is authoritative
    trail.append("alice", "write", "setpoint", "B0")
    assert problems(trail) == ["entry 6 missing (deleted): entry 7 follows entry 5"]


def test_reordered_entries_are_named(trail: AuditTrail, db: Path) -> None:
    con = drop_triggers(db)
    for a, b in ((3, -1), (4, 3), (-1, 4)):  # swap entries 3 and 4
        con.execute("UPDATE audit_trail SET seq = ? WHERE seq = ?", (b, a))
    assert problems(trail) == ["entry 3: holds entry 4 moved here (entries re-ordered)",
                               "entry 4: holds entry 3 moved here (entries re-ordered)"]


def test_forged_appended_row_is_named(trail: AuditTrail, db: Path) -> None:
    e = trail.get(6)
    ts = e.ts + timedelta(seconds=1)
    h = entry_hash(7, ts, "mallory", "approve", "batch", "B1", None, None, "", e.hash)
    raw(db).execute("INSERT INTO audit_trail VALUES (7, ?, 'mallory', 'approve', 'batch', 'B1', "
                    "NULL, NULL, '', ?, ?)", (ts.strftime("%Y-%m-%d %H:%M:%S.%f"), e.hash, h))
    assert problems(trail) == ["entry 7 not appended through the audit trail "
                               "(the chain head is entry 6)"]


def test_edited_file_bytes_are_named(db: Path) -> None:
    """The attacker skips SQL entirely: the database file itself is edited."""
    with Records.open(db) as records:
        audit = AuditTrail(records)
        for i in range(1, 5):
            audit.append("alice", "calibrate", "probe", f"P{i}", None, None, f"span gas lot {i}00A")
        with records.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    data = db.read_bytes()
    assert data.count(b"span gas lot 200A") == 1
    db.write_bytes(data.replace(b"span gas lot 200A", b"span gas lot 900A"))
    with Records.open(db) as records:
        found = AuditTrail(records).verify()
    assert found.problems == ["entry 2: content altered (its hash no longer matches; "
                              "actor='alice' action='calibrate' entity='probe')"]


def test_whole_chain_rewrite_needs_an_anchor(trail: AuditTrail, db: Path) -> None:
    """A rewrite of every later hash (and the head) passes the chain; an outside anchor catches it."""
    anchor = trail.head()
    con = drop_triggers(db)
    prev = trail.get(2).hash
    for seq in range(3, 7):
        e = trail.get(seq)
        actor = "mallory" if seq == 3 else e.actor
        h = entry_hash(seq, e.ts, actor, e.action, e.entity, e.entity_id, e.old, e.new, e.reason,
                       prev)
        con.execute("UPDATE audit_trail SET actor = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                    (actor, prev, h, seq))
        prev = h
    con.execute("UPDATE audit_head SET hash = ?", (prev,))
    assert problems(trail) == []  # only the dropped triggers are left to see
    assert trail.verify([anchor]).problems[-1].startswith("entry 6: hash differs from the anchor")


def test_unreadable_timestamp_is_named(trail: AuditTrail, db: Path) -> None:
    drop_triggers(db).execute("UPDATE audit_trail SET ts = 'yesterday' WHERE seq = 5")
    assert problems(trail) == ["entry 5: unreadable timestamp 'yesterday' (edited?)"]


# -- several writers --------------------------------------------------------------------------


def test_two_processes_append_one_valid_chain(db: Path, tmp_path: Path) -> None:
    Records.open(db).close()
    go, n = tmp_path / "go", 150
    procs = [subprocess.Popen([sys.executable, str(REPO / "tests" / "audit_child.py"), str(db),
                               name, str(n), str(go)], stdout=subprocess.PIPE, text=True,
                              cwd=REPO) for name in ("writer-a", "writer-b")]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "READY"
    t0 = time.perf_counter()
    go.touch()
    outs = [p.communicate(timeout=120)[0] for p in procs]
    elapsed = time.perf_counter() - t0
    assert [p.returncode for p in procs] == [0, 0] and all(f"DONE {n}" in o for o in outs)
    with Records.open(db) as records:
        audit = AuditTrail(records)
        result = audit.verify()
        frame = audit.entries()
    assert result.ok, result.problems
    assert frame["seq"].to_list() == list(range(1, 2 * n + 1))
    assert frame.group_by("actor").len().sort("actor")["len"].to_list() == [n, n]
    # the writers really interleaved (otherwise this test proves nothing about the lock)
    switches = (frame["actor"] != frame["actor"].shift(1)).sum()
    assert switches >= 10, f"no interleaving in {elapsed:.1f} s"
    print(f"\n2 processes x {n} appends: {2 * n / elapsed:.0f} appends/s, {switches} switches")


def test_nested_transaction_is_an_error_not_a_deadlock(trail: AuditTrail) -> None:
    with trail.transaction() as conn:
        trail.append("alice", "note", "batch", "B1", conn=conn)
        with pytest.raises(RuntimeError, match=r"pass its connection as append\(\.\.\., conn=conn\)"):
            trail.append("alice", "note", "batch", "B2")
    assert trail.entries()["entity_id"].to_list()[-1] == "B1" and trail.verify().ok
    with pytest.raises(ZeroDivisionError), trail.transaction() as conn:  # rolled back whole
        trail.append("alice", "note", "batch", "B3", conn=conn)
        1 / 0  # noqa: B018
    assert trail.head()[0] == 7
