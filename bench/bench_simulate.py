"""Benchmark: `cellwatch simulate --batches 200 --seed 1` (target < 60 s on 2 cores), twice, same data.

Prints a table: wall time of each run, samples written, throughput, a digest of everything written,
and, measured in the same run as a baseline, the time polars alone needs to write the same number
of long-format rows to Parquet (the floor any simulator writing this history must pay).

    python bench/bench_simulate.py [--batches 200] [--seed 1] [--workers 2]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from plant.historian import Historian
from plant.records import Records
from plant.site import load_demo_site
from plant.sim.history import generate_history


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    h.update(Historian(folder / "historian").read().sort("tag", "ts").write_ipc(None).getvalue())
    rec = Records.open(folder / "records.db")
    for t in (rec.batches(), rec.setpoints(), rec.offline_results(), rec.release_results(), rec.fault_labels()):
        h.update(t.sort(t.columns).write_ipc(None).getvalue())
    rec.close()
    return h.hexdigest()[:16]


def baseline(rows: int, folder: Path) -> float:
    """Write `rows` long-format samples (day-partitioned Parquet, sorted) with polars alone."""
    rng = np.random.default_rng(0)
    per_tag = rows // 120
    ts = np.tile(np.arange(per_tag, dtype=np.int64) * 60_000_000 + 1_736_150_400_000_000, 120)
    frame = pl.DataFrame({
        "ts": pl.Series(ts).cast(pl.Datetime("us", "UTC")),
        "tag": pl.Series([f"T{i:03d}" for i in range(120)]).gather(np.repeat(np.arange(120), per_tag)),
        "value": rng.standard_normal(per_tag * 120),
    })
    t0 = time.perf_counter()
    for (day,), part in frame.with_columns(day=pl.col("ts").dt.date()).partition_by("day", as_dict=True).items():
        part.drop("day").sort("tag", "ts").write_parquet(folder / f"{day}.parquet", compression="zstd")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    site = load_demo_site()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in ("run 1", "run 2"):
            out = Path(tmp) / run.replace(" ", "")
            t0 = time.perf_counter()
            res = generate_history(site, out, args.batches, args.seed, workers=args.workers)
            wall = time.perf_counter() - t0
            rows.append((run, wall, res.samples, digest(out)))
            shutil.rmtree(out)
        base_dir = Path(tmp) / "baseline"
        base_dir.mkdir()
        base = baseline(rows[0][2], base_dir)
    print(f"\ncellwatch simulate --batches {args.batches} --seed {args.seed} (workers={args.workers})\n")
    print(f"| {'run':<28} | {'wall s':>7} | {'samples':>12} | {'samples/s':>11} | {'x baseline':>10} | digest           |")
    print(f"|{'-' * 30}|{'-' * 9}|{'-' * 14}|{'-' * 13}|{'-' * 12}|{'-' * 18}|")
    for run, wall, n, dig in rows:
        print(f"| {run:<28} | {wall:7.1f} | {n:12,} | {n / wall:11,.0f} | {wall / base:10.1f} | {dig} |")
    print(f"| {'baseline: polars write only':<28} | {base:7.1f} | {rows[0][2]:12,} | {rows[0][2] / base:11,.0f} | "
          f"{1.0:10.1f} | {'-':16} |")
    same = rows[0][3] == rows[1][3]
    print(f"\nidentical data across runs: {'yes' if same else 'NO'};  target < 60 s: "
          f"{'met' if max(r[1] for r in rows) < 60 else 'MISSED'}")


if __name__ == "__main__":
    main()
