"""Benchmark the telemetry historian against a plain SQLite baseline measured in the same run.

    python bench/bench_historian.py            # 120 tags x 30 days at 1 min (5.2 M samples)
    python bench/bench_historian.py --quick    # 40 tags x 14 days

Prints append throughput (batched appends) and the time to read one batch's 12-day, 20-tag
trajectory at 1-minute resolution after compaction, each beside SQLite (executemany into a table
indexed on (tag, ts), the same query) and the ratio. Data is synthetic and seeded.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl

from plant.historian import Historian
from plant.samples import SAMPLE_SCHEMA, Quality

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
MINUTE_US = 60_000_000


def make_batch(tags: list[str], start_min: int, minutes: int, rng: np.random.Generator) -> pl.DataFrame:
    """Long-format samples for all tags over [start_min, start_min + minutes) at 1-minute spacing."""
    n = len(tags) * minutes
    t_us = int(T0.timestamp() * 1_000_000) + (start_min + np.arange(minutes, dtype=np.int64)) * MINUTE_US
    ts = np.tile(t_us, len(tags))  # tag-major, like a connector that flushes per tag
    bad = pl.Series(rng.random(n) < 0.01)
    return pl.DataFrame(
        {
            "ts": pl.Series(ts).cast(pl.Datetime("us", "UTC")),
            "tag": np.repeat(np.array(tags), minutes),
            "value": np.cumsum(rng.normal(0.0, 0.1, size=n)) + 37.0,  # random walk: realistic to compress
            "quality": pl.Series(np.where(bad, Quality.BAD.value, Quality.GOOD.value)),
            "status": pl.select(pl.when(bad).then(pl.lit("BadSensorFailure"))).to_series(),
            "server_ts": pl.Series(ts).cast(pl.Datetime("us", "UTC")),
            "received_ts": pl.Series(ts + rng.integers(1_000, 200_000, size=n)).cast(pl.Datetime("us", "UTC")),
        },
        schema=SAMPLE_SCHEMA,
    ).with_columns(value=pl.when(bad).then(None).otherwise("value"))  # a BAD sample carries no value


def sqlite_rows(df: pl.DataFrame) -> list[tuple]:
    """Rows for SQLite: timestamps as integer microseconds since the epoch."""
    epoch = pl.col("ts", "server_ts", "received_ts").dt.epoch("us")
    return df.with_columns(epoch, pl.col("quality").cast(pl.String)).rows()


@dataclass
class Result:
    append_s: float
    read_s: float
    rows: int
    compact_s: float = 0.0
    resample_s: float = 0.0
    note: str = ""


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    """Median wall time of repeat runs (seconds) and the last result."""
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def run_historian(root: Path, batches: list[pl.DataFrame], query: tuple, repeat: int) -> Result:
    h = Historian(root)
    t = time.perf_counter()
    for b in batches:
        h.append(b)
    append_s = time.perf_counter() - t
    t = time.perf_counter()
    stats = h.compact(min_files=2, grace_s=0)
    compact_s = time.perf_counter() - t
    read_s, df = timed(lambda: h.read(*query), repeat)
    resample_s, _ = timed(lambda: h.resample(*query, every="1h"), repeat)
    mb = sum(f.stat().st_size for f in root.rglob("*.parquet")) / 1e6
    note = f"{stats.files_before} -> {stats.files_after} files, {mb:.1f} MB"
    return Result(append_s, read_s, df.height, compact_s, resample_s, note)  # type: ignore[union-attr]


def run_sqlite(path: Path, batches: list[pl.DataFrame], query: tuple, repeat: int) -> Result:
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")  # durable at each commit, like an acknowledged append
    con.execute(
        "CREATE TABLE samples (ts INTEGER NOT NULL, tag TEXT NOT NULL, value REAL, quality TEXT NOT NULL,"
        " status TEXT, server_ts INTEGER, received_ts INTEGER)"
    )
    con.execute("CREATE INDEX samples_tag_ts ON samples (tag, ts)")
    append_s = 0.0
    for b in batches:
        rows = sqlite_rows(b)  # converting to tuples is not charged to SQLite
        t = time.perf_counter()
        with con:  # one transaction per batch, as the historian writes one segment per batch
            con.executemany("INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        append_s += time.perf_counter() - t
    tags, start, end = query
    sql = f"SELECT * FROM samples WHERE tag IN ({','.join('?' * len(tags))}) AND ts >= ? AND ts < ? ORDER BY tag, ts"
    args = (*tags, int(start.timestamp() * 1e6), int(end.timestamp() * 1e6))
    read_s, rows = timed(lambda: con.execute(sql, args).fetchall(), repeat)
    con.close()
    return Result(append_s, read_s, len(rows))  # type: ignore[arg-type]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="40 tags x 14 days instead of 120 x 30")
    ap.add_argument("--batch-hours", type=float, default=12.0, help="hours of all tags per append (default 12)")
    ap.add_argument("--repeat", type=int, default=5, help="runs per query; the median is shown")
    args = ap.parse_args()
    n_tags, n_days = (40, 14) if args.quick else (120, 30)
    tags = [f"BR{i // 10:02d}.TAG{i % 10}" for i in range(n_tags)]
    step = int(args.batch_hours * 60)
    rng = np.random.default_rng(20260101)
    batches = [make_batch(tags, m, min(step, n_days * 1440 - m), rng) for m in range(0, n_days * 1440, step)]
    total = sum(b.height for b in batches)
    query = (tags[:20], T0 + timedelta(days=1), T0 + timedelta(days=13))  # one batch: 20 tags x 12 days

    with tempfile.TemporaryDirectory(prefix="bench-historian-") as tmp:
        hist = run_historian(Path(tmp) / "hist", batches, query, args.repeat)
        sql = run_sqlite(Path(tmp) / "baseline.sqlite", batches, query, args.repeat)
    assert hist.rows == sql.rows, (hist.rows, sql.rows)

    print(f"store: {n_tags} tags x {n_days} days at 1 min = {total:,} samples in {len(batches)} appends of "
          f"{batches[0].height:,}; compaction {hist.compact_s:.2f} s ({hist.note})")
    print(f"query: {len(query[0])} tags x 12 days = {hist.rows:,} rows, median of {args.repeat} runs; "
          "historian returns a typed polars frame, SQLite a list of tuples (fetchall)\n")
    rate, sql_rate = total / hist.append_s, total / sql.append_s
    rd, sql_rd = hist.read_s * 1e3, sql.read_s * 1e3
    print(f"{'metric':<40} {'historian':>12} {'sqlite':>12} {'ratio':>7} {'target':>13}")
    print(f"{'append throughput (samples/s)':<40} {rate:>12,.0f} {sql_rate:>12,.0f} {rate / sql_rate:>6.1f}x "
          f"{'>= 1,000,000':>13}")
    print(f"{'read 20 tags x 12 days @ 1 min (ms)':<40} {rd:>12.1f} {sql_rd:>12.1f} {sql_rd / rd:>6.1f}x {'< 200':>13}")
    print(f"{'resample it to 1 h means (ms, info)':<40} {hist.resample_s * 1e3:>12.1f} {'-':>12}")
    print("\nratio = how many times faster the historian is than SQLite.")

if __name__ == "__main__":
    main()
