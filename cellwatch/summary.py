"""A plain-text summary of a history: what ran, what it yielded, what went wrong, what was recorded."""

from __future__ import annotations

import time

import polars as pl

from plant.historian import Historian
from plant.records import Records


def _fmt(x: float) -> str:
    return f"{x:.2e}"


def render(hist: Historian, records: Records) -> str:
    """Summary lines for batches, release, faults and telemetry of one data folder."""
    batches = records.batches()
    release = records.release_results()
    labels = records.fault_labels()
    lines = [f"batches: {batches.height} on {batches['unit'].n_unique()} units, "
             f"{batches['start_ts'].min():%Y-%m-%d} .. {batches['end_ts'].max():%Y-%m-%d}"]
    kinds = batches.group_by("kind").len().sort("kind")
    lines.append("  kinds: " + ", ".join(f"{k} {n}" for k, n in kinds.iter_rows()))
    tvc = release.filter(pl.col("attribute") == "TOTAL_VIABLE_CELLS")["value"]
    if tvc.len():
        q = tvc.quantile
        lines.append(f"harvest viable cells: min {_fmt(tvc.min())}  p10 {_fmt(q(0.1))}  median {_fmt(q(0.5))}  "
                     f"p90 {_fmt(q(0.9))}  max {_fmt(tvc.max())}")
    rejected = batches.filter(pl.col("disposition") == "rejected").height
    lines.append(f"release: {batches.height - rejected} released, {rejected} rejected "
                 f"({100 * rejected / max(batches.height, 1):.1f} %)")
    failed = (release.filter(~pl.col("passed")).group_by("attribute").len().sort("len", descending=True))
    if failed.height:
        lines.append("  failed attributes: " + ", ".join(f"{a} {n}" for a, n in failed.iter_rows()))
    by_kind = labels.group_by("kind").len().sort("len", descending=True)
    lines.append(f"fault labels: {labels.height}" + (": " + ", ".join(f"{k} {n}" for k, n in by_kind.iter_rows())
                                                     if labels.height else ""))
    bounds = hist.time_bounds()
    tags = hist.tags()
    if bounds is not None and batches.height:
        b = batches.row(0, named=True)
        unit_tags = [t for t in tags if t.startswith(f"{b['unit']}.")]
        t0 = time.perf_counter()
        traj = hist.read(unit_tags, b["start_ts"], b["end_ts"])
        ms = 1000 * (time.perf_counter() - t0)
        lines.append(f"telemetry: {len(tags)} tags, {bounds[0]:%Y-%m-%d %H:%M} .. {bounds[1]:%Y-%m-%d %H:%M} UTC")
        bad = traj.filter(pl.col("quality") != "GOOD").height
        lines.append(f"  batch {b['batch_id']} on {b['unit']}: {traj.height:,} samples of {len(unit_tags)} tags "
                     f"({bad} not GOOD) read in {ms:.0f} ms")
    return "\n".join(lines)
