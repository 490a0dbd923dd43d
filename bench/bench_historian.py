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
    n_t = len(tags)
    t_us = int(T0.timestamp() * 1_000_000) + (start_min + np.arange(minutes, dtype=np.int64)) * MINUTE_US
    ts = np.tile(t_us, n_t)  # tag-major, like a connector that flushes per tag
    value = np.cumsum(rng.normal(0.0, 0.1, size=n_t * minutes)) + 37.0
    bad = pl.Series(rng.random(n_t * minutes) < 0.01)
    ts_col = pl.Series(ts).cast(pl.Datetime("us", "UTC"))
    return pl.DataFrame(
        {
            "ts": ts_col,
            "tag": np.repeat(np.array(tags), minutes),
            "value": np.cumsum(rng.normal(0.0, 0.1, size=n_t * minutes)) + 37.0,
            "quality": pl.Series(np.where(bad, Quality.BAD.value, Quality.GOOD.value)),
            "status": pl.Series([None] * ts.size, dtype=pl.String),
            "server_ts": ts_col,
            "received_ts": pl.Series(ts + rng.integers(1_000, 200_000, size=ts.size)).cast(pl.Datetime("us", "UTC")),
        }
    ).with_columns(
        value=pl.when(bad).then(None).otherwise(pl.col("value")),  # a BAD sample carries no value
        status=pl.when(bad).then(pl.lit("BadSensorFailure")),
    ).cast(SAMPLE_SCHEMA)  # type: ignore[arg-type]


def sqlite_rows(df: pl.DataFrame) -> list[tuple]:
    """Rows for SQLite: timestamps as integer microseconds since the epoch."""
    return df.with_columns(pl.col("ts", "server_ts", "received_ts").dt.epoch("us"), pl.col("quality").cast(pl.String)).rows()


def open_sqlite(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")  # durable at commit, like an acknowledged append
    con.execute(
        "CREATE TABLE samples (ts INTEGER NOT NULL, tag TEXT NOT NULL, value REAL, quality TEXT NOT NULL,"
        " status TEXT, server_ts INTEGER, received_ts INTEGER)"
    )
    con.execute("CREATE INDEX samples_tag_ts ON samples (tag, ts)")
    return con


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    """Median wall time of repeat runs (seconds) and the last result."""
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="40 tags x 14 days instead of 120 x 30")
    ap.add_argument("--batch-hours", type=float, default=12.0, help="hours of all tags per append (default 12)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    n_tags, n_days = (40, 14) if args.quick else (120, 30)
    tags = [f"BR{i // 10:02d}.TAG{i % 10}" for i in range(n_tags)]
    batch_min = int(args.batch_hours * 60)
    rng = np.random.default_rng(20260101)
    batches = [make_batch(tags, m, min(batch_min, n_days * 1440 - m), rng) for m in range(0, n_days * 1440, batch_min)]
    total = sum(b.height for b in batches)

    with tempfile.TemporaryDirectory(prefix="bench-historian-") as tmp:
        h = Historian(Path(tmp) / "hist")
        t = time.perf_counter()
        for b in batches:
            h.append(b)
        t_append = time.perf_counter() - t
        t = time.perf_counter()
        cstats = h.compact(min_files=2, grace_s=0)
        t_compact = time.perf_counter() - t
        size_mb = sum(f.stat().st_size for f in (Path(tmp) / "hist").rglob("*.parquet")) / 1e6

        con = open_sqlite(Path(tmp) / "baseline.sqlite")
        rows = [sqlite_rows(b) for b in batches]  # conversion to tuples is not charged to SQLite
        t = time.perf_counter()
        for r in rows:
            with con:
                con.executemany("INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?, ?)", r)
        t_sql_append = time.perf_counter() - t
        del rows

        q_tags = tags[:20]
        q_start = T0 + timedelta(days=1)
        q_end = q_start + timedelta(days=12)
        t_read, df = timed(lambda: h.read(q_tags, q_start, q_end), args.repeat)
        us = (int(q_start.timestamp() * 1e6), int(q_end.timestamp() * 1e6))
        marks = ",".join("?" * len(q_tags))
        sql = f"SELECT * FROM samples WHERE tag IN ({marks}) AND ts >= ? AND ts < ? ORDER BY tag, ts"
        t_sql_read, sql_rows = timed(lambda: con.execute(sql, (*q_tags, *us)).fetchall(), args.repeat)
        t_resample, _ = timed(lambda: h.resample(q_tags, q_start, q_end, every="1h"), args.repeat)
        con.close()

    assert df.height == len(sql_rows), (df.height, len(sql_rows))  # type: ignore[union-attr, arg-type]
    print(f"store: {n_tags} tags x {n_days} days at 1 min = {total:,} samples in {len(batches)} appends "
          f"of {batches[0].height:,}; compaction {t_compact:.2f} s ({cstats.files_before} -> {cstats.files_after} files, "
          f"{size_mb:.1f} MB on disk)")
    print(f"query: {len(q_tags)} tags x 12 days = {df.height:,} rows (median of {args.repeat})")  # type: ignore[union-attr]
    print()
    print(f"{'metric':<44} {'historian':>14} {'sqlite':>14} {'ratio':>8} {'target':>14}")
    rate, sql_rate = total / t_append, total / t_sql_append
    print(f"{'append throughput (samples/s)':<44} {rate:>14,.0f} {sql_rate:>14,.0f} {rate / sql_rate:>7.1f}x {'>= 1,000,000':>14}")
    print(f"{'read 20 tags x 12 days @1 min (ms)':<44} {t_read * 1e3:>14.1f} {t_sql_read * 1e3:>14.1f} "
          f"{t_sql_read / t_read:>7.1f}x {'< 200':>14}")
    print(f"{'resample same to 1 h mean (ms, info)':<44} {t_resample * 1e3:>14.1f} {'-':>14} {'':>8} {'':>14}")
    print("\nratio = how many times faster the historian is (SQLite time / historian time).")


if __name__ == "__main__":
    main()
