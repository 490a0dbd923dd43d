"""Benchmark: alarm evaluation must keep up with 10,000 samples/s (issue 5).

Simulates a small history (demo site), materialises it as sample frames, and times the engine on
  * live-sized frames of 10,000 samples (one second of a 10k samples/s plant per call), and
  * replay-sized frames (6 h of plant data per call, as `cellwatch alarms run` reads them),
with, measured in the same run as baselines, a per-sample Python loop doing only the limit checks
with deadband (no delays, stale, ROC or states) and polars alone filtering and sorting the frames.

    python bench/bench_alarms.py [--batches 8] [--seed 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import polars as pl

from plant.alarms import AlarmEngine, build_points, windows_from_batches
from plant.alarms.points import Condition
from plant.alarms.replay import frames
from plant.historian import Historian
from plant.records import Records
from plant.site import load_demo_site
from plant.sim.history import generate_history

TARGET = 10_000  # samples per second


def engine_rate(site, windows, chunks: list[pl.DataFrame]) -> tuple[int, float, int]:
    eng = AlarmEngine(site, unit_windows=windows)
    n = events = 0
    t0 = time.perf_counter()
    for f in chunks:
        events += len(eng.process(f))
        n += f.height
    return n, time.perf_counter() - t0, events


def python_loop(site, chunks: list[pl.DataFrame], limit_rows: int) -> tuple[int, float]:
    """Limit checks with deadband, one sample at a time: what a straightforward engine would do."""
    pts: dict[str, list[tuple[bool, float, float, int]]] = {}
    for i, p in enumerate(build_points(site)):
        if p.condition in (Condition.HI, Condition.LO):
            pts.setdefault(p.tag, []).append((p.condition == Condition.LO, p.limit, p.deadband, i))
    state = [False] * (max((i for v in pts.values() for *_, i in v), default=0) + 1)
    n = 0
    t0 = time.perf_counter()
    for f in chunks:
        for tag, value, quality in f.select("tag", "value", "quality").iter_rows():
            n += 1
            if value is None or quality not in ("GOOD", "UNCERTAIN"):
                continue
            for lo, lim, db, i in pts.get(tag, ()):
                if lo:
                    state[i] = value < lim or (state[i] and value < lim + db)
                else:
                    state[i] = value > lim or (state[i] and value > lim - db)
        if n >= limit_rows:
            break
    return n, time.perf_counter() - t0


def polars_floor(chunks: list[pl.DataFrame], tags: list[str]) -> tuple[int, float]:
    n = 0
    t0 = time.perf_counter()
    for f in chunks:
        n += f.filter(pl.col("tag").is_in(tags)).sort("tag", "ts").height and f.height
    return n, time.perf_counter() - t0


def rechunk(chunks: list[pl.DataFrame], rows: int) -> list[pl.DataFrame]:
    whole = pl.concat(chunks)
    return [whole.slice(i, rows) for i in range(0, whole.height, rows)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    site = load_demo_site()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        generate_history(site, out, args.batches, args.seed, workers=1)
        hist = Historian(out / "historian")
        records = Records.open(out / "records.db")
        windows = windows_from_batches(records.batches())
        records.close()
        lo, hi = hist.time_bounds()  # type: ignore[misc]
        replay_frames = frames(hist, lo, hi + timedelta(microseconds=1), timedelta(hours=6))
    live_frames = rechunk(replay_frames, TARGET)
    total = sum(f.height for f in replay_frames)
    tags = sorted({p.tag for p in build_points(site)})
    rows = []
    for name, chunks in (("engine, live frames of 10,000 samples", live_frames),
                         ("engine, replay frames of 6 h", replay_frames)):
        n, secs, events = engine_rate(site, windows, chunks)
        rows.append((name, n, secs, f"{events} events"))
    n, secs = python_loop(site, live_frames, 300_000)
    rows.append(("baseline: per-sample Python limit checks", n, secs, "limits + deadband only"))
    n, secs = polars_floor(live_frames, tags)
    rows.append(("baseline: polars filter + sort only", n, secs, "the floor of any frame engine"))
    print(f"alarm evaluation, demo site, {args.batches} batches, {total:,} samples, {len(build_points(site))} points")
    print(f"{'case':<42} {'samples':>10} {'seconds':>8} {'samples/s':>12} {'x 10k/s':>8}  note")
    for name, n, secs, note in rows:
        rate = n / secs if secs else float("inf")
        print(f"{name:<42} {n:>10,} {secs:>8.2f} {rate:>12,.0f} {rate / TARGET:>8.1f}  {note}")
    live_rate = rows[0][1] / rows[0][2]
    print(f"\nrequirement {TARGET:,} samples/s: {'PASS' if live_rate >= TARGET else 'FAIL'} "
          f"(live frames: {live_rate:,.0f} samples/s)")


if __name__ == "__main__":
    main()
