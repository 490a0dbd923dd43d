"""Benchmark audit-trail appends and verification against a plain-insert baseline in the same run.

    python bench/bench_audit.py            # 400 single appends, 50 000 entries verified
    python bench/bench_audit.py --quick    # 150 single appends, 10 000 entries verified

Each single append is its own durable transaction (SQLite WAL, synchronous=FULL, as Records
opens it), so the baseline is the same: one plain INSERT per committed transaction, same columns.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from plant.audit import AuditTrail
from plant.records import Records

COLUMNS = ("seq INTEGER PRIMARY KEY, ts TEXT, actor TEXT, action TEXT, entity TEXT, "
           "entity_id TEXT, old TEXT, new TEXT, reason TEXT, prev_hash TEXT, hash TEXT")


def timed(fn: Callable[[], int]) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = fn()
    return n, time.perf_counter() - t0


def plain_inserts(db: Path, n: int, per_tx: int) -> int:
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute(f"CREATE TABLE IF NOT EXISTS plain ({COLUMNS})")
    row = ("2026-01-01 00:00:00.000000", "alice", "write", "setpoint", "B1", '{"value":36.5}',
           '{"value":37.0}', "per SOP-12", "0" * 64)
    for i in range(0, n, per_tx):
        con.execute("BEGIN IMMEDIATE")
        con.executemany("INSERT INTO plain (ts, actor, action, entity, entity_id, old, new, reason,"
                        " prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [(*row, f"{i + j:064x}") for j in range(min(per_tx, n - i))])
        con.execute("COMMIT")
    con.close()
    return n


def audit_appends(db: Path, n: int, per_tx: int, name: str = "alice") -> int:
    with Records.open(db) as records:
        audit = AuditTrail(records)
        for i in range(0, n, per_tx):
            if per_tx == 1:
                audit.append(name, "write", "setpoint", "B1", {"value": 36.5}, {"value": 37.0},
                             "per SOP-12")
                continue
            with audit.transaction() as conn:
                for _ in range(min(per_tx, n - i)):
                    audit.append(name, "write", "setpoint", "B1", {"value": 36.5},
                                 {"value": 37.0}, "per SOP-12", conn=conn)
    return n


def _writer(db: str, n: int, name: str, go: mp.synchronize.Event) -> None:  # type: ignore[name-defined]
    go.wait()
    audit_appends(Path(db), n, 1, name)


def two_writers(db: Path, n: int) -> tuple[int, float, bool]:
    Records.open(db).close()
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(str(db), n // 2, f"w{i}", go)) for i in range(2)]
    for p in procs:
        p.start()
    time.sleep(3.0)  # let both import and open the database before the clock starts
    t0 = time.perf_counter()
    go.set()
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - t0
    with Records.open(db) as records:
        ok = AuditTrail(records).verify().ok
    return n, elapsed, ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    singles, verified = (150, 10_000) if args.quick else (400, 50_000)
    rows: list[tuple[str, int, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        base = timed(lambda: plain_inserts(d / "plain1.db", singles, 1))
        rows.append(("plain INSERT, 1 per transaction (baseline)", *base))
        rows.append(("audit append, 1 per transaction", *timed(
            lambda: audit_appends(d / "audit1.db", singles, 1))))
        n, el, ok = two_writers(d / "audit2.db", singles)
        rows.append((f"audit append, 2 processes at once (chain ok: {ok})", n, el))
        batch = timed(lambda: plain_inserts(d / "plainB.db", verified, 1000))
        rows.append(("plain INSERT, 1000 per transaction (baseline)", *batch))
        rows.append(("audit append, 1000 per transaction", *timed(
            lambda: audit_appends(d / "auditB.db", verified, 1000))))
        with Records.open(d / "auditB.db") as records:
            audit = AuditTrail(records)
            result = None

            def verify() -> int:
                nonlocal result
                result = audit.verify()
                return result.entries
            rows.append(("audit verify (recompute every hash, walk the chain)", *timed(verify)))
            assert result is not None and result.ok, result
    width = max(len(r[0]) for r in rows)
    print(f"{'operation':<{width}}  {'entries':>8}  {'per second':>11}  {'us each':>9}")
    for name, n, secs in rows:
        print(f"{name:<{width}}  {n:>8}  {n / secs:>11,.0f}  {secs / n * 1e6:>9,.0f}")
    print(f"\nsingle append vs baseline: {rows[1][2] / base[1]:.2f}x the time; batched: "
          f"{rows[4][2] / batch[1]:.2f}x")


if __name__ == "__main__":
    main()
