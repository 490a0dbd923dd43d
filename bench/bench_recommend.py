"""Benchmark: setpoint advice for one running batch must take under 1 s (issue 6).

Builds (or reads) a plant history, trains the recommender on it, then times, for running-batch snapshots, the
way a site asks: read the batch's state from the historian and records, then `Recommender.recommend`. In the
same run, as the baseline, an exhaustive joint search scores every combination of the candidate values of all
controllable setpoints (5 per setpoint, 3125 plans) through the same models and guards.

    python bench/bench_recommend.py [--history DIR] [--models DIR] [--batches 40] [--samples 20] [--seed 1]
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl

from models.recommend import Advice, Recommender, step_bounds
from models.recommend_state import BatchState, load_state
from models.recommend_train import TrainConfig, load_models, train_recommender
from plant.historian import Historian
from plant.records import Records
from plant.sim.history import generate_history
from plant.site import load_demo_site

TARGET_S = 1.0


def exhaustive(rec: Recommender, state: BatchState) -> tuple[dict[str, float], float]:
    """Best joint plan over the full grid of candidate values (the baseline the greedy search replaces)."""
    tags = rec.site.controllable(state.unit)
    cur = {t.short: float(state.setpoints[t.short]) for t in tags}  # type: ignore[arg-type]
    grids = []
    for t in tags:
        lo, hi = step_bounds(t, cur[t.short])
        grids.append(sorted({float(np.clip(cur[t.short] + f * t.max_step, lo, hi)) for f in (-1, -.5, 0, .5, 1)}))
    plans = [dict(zip([t.short for t in tags], combo)) for combo in itertools.product(*grids)]
    done, past = rec._progress(state, list(cur))
    risk = rec._risk(state, plans, cur)
    risk = risk - rec._risk(state, [cur], cur)[0]
    scores = [rec._score(rec._gain(state, done, past, cur, p), float(r)) for p, r in zip(plans, risk)]
    i = int(np.argmax(scores))
    return plans[i], scores[i]


def snapshots(records: Records, n: int, seed: int) -> list[tuple[str, object]]:
    """(batch id, time) pairs inside batches' advisory windows."""
    rng = np.random.default_rng(seed)
    b = records.batches(status="harvested").sort("start_ts").tail(max(n, 8))
    out = []
    for _ in range(n):
        row = b.row(int(rng.integers(b.height)), named=True)
        hours = (row["planned_end_ts"] - row["start_ts"]).total_seconds() / 3600
        out.append((row["batch_id"], row["start_ts"] + timedelta(hours=float(rng.uniform(30, hours - 30)))))
    return out


def row(name: str, xs: list[float]) -> str:
    a = np.array(xs) * 1000
    return f"| {name:<46} | {np.median(a):9.1f} | {np.percentile(a, 95):9.1f} | {a.max():9.1f} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--history", type=Path, help="historian/ + records.db (default: simulate --batches)")
    ap.add_argument("--models", type=Path, help="saved recommender models (default: train on the history)")
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    site = load_demo_site()
    with tempfile.TemporaryDirectory() as tmp:
        history = args.history
        if history is None:
            history = Path(tmp) / "history"
            t0 = time.perf_counter()
            generate_history(site, history, args.batches, args.seed, workers=1)
            print(f"simulated {args.batches} batches in {time.perf_counter() - t0:.0f} s")
        hist, records = Historian(history / "historian"), Records.open(history / "records.db")
        if args.models is not None:
            models = load_models(args.models)
        else:
            t0 = time.perf_counter()
            models, _ = train_recommender(hist, records, site, TrainConfig(telemetry_batches=min(args.batches, 60)))
            print(f"trained {models.version} in {time.perf_counter() - t0:.0f} s")
        rec = Recommender(site, models)
        load_t, advise_t, total_t, brute_t, kinds = [], [], [], [], []
        for bid, t in snapshots(records, args.samples, args.seed):
            t0 = time.perf_counter()
            state = load_state(hist, records, site, bid, t)
            t1 = time.perf_counter()
            result = rec.recommend(state)
            t2 = time.perf_counter()
            load_t.append(t1 - t0)
            advise_t.append(t2 - t1)
            total_t.append(t2 - t0)
            kinds.append("advice" if isinstance(result, Advice) else result.reason.value)
            if not rec.input_problems(state):
                t3 = time.perf_counter()
                exhaustive(rec, state)
                brute_t.append(time.perf_counter() - t3 + (t1 - t0))
        records.close()
    print(f"\n{args.samples} running-batch snapshots; results: "
          + ", ".join(f"{k} {v}" for k, v in pl.Series(kinds).value_counts().iter_rows()))
    print(f"| {'step (per batch)':<46} | median ms |    p95 ms |    max ms |")
    print(f"|{'-' * 48}|-----------|-----------|-----------|")
    print(row("read state (historian + records)", load_t))
    print(row("recommend (guards + greedy search + records)", advise_t))
    print(row("total: advice for one batch", total_t))
    if brute_t:
        print(row("baseline: read state + exhaustive 3125 plans", brute_t))
    ok = max(total_t) < TARGET_S
    print(f"\ntarget: under {TARGET_S:g} s per batch -> {'met' if ok else 'NOT met'} (max {max(total_t):.2f} s)")


if __name__ == "__main__":
    main()
