"""What the recommender knows about a running batch at time t, read from the historian and the records.

One `BatchState` per batch: the feature row as of t (models.features), the setpoints in force, when each
setpoint last changed or was last recommended (the minimum-interval guard), and how much of the recent
telemetry actually arrived (the gap guard). Nothing here knows the twin.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

import polars as pl

from models.dataset import PlantData, load_plant_data
from models.features import feature_rows
from plant.historian import Historian
from plant.recommendations import RecommendationStore
from plant.records import Records
from plant.samples import TS_DTYPE
from plant.site import Site

COVERAGE_WINDOW_H = 6.0  # recent telemetry the gap guard looks at


@dataclass(frozen=True)
class BatchState:
    """A running batch as known at t; `row` is its one-row feature frame (models.features.feature_rows)."""

    batch_id: str
    unit: str
    unit_kind: str
    t: datetime  # now: when the advice is asked for (the feature row is as of t floored to the bucket grid)
    t_h: float  # culture hours of the feature row
    planned_h: float
    start: datetime
    row: pl.DataFrame
    setpoints: Mapping[str, float | None]  # short tag -> value in force at t (None: no record of it)
    setpoint_log: pl.DataFrame  # tag, ts, value: every recorded change up to t (recipe values at the start)
    last_change: Mapping[str, datetime]  # short tag -> latest change or recommendation at or before t
    coverage: Mapping[str, float]  # online tag -> share of the last window's buckets with a usable sample

    def __post_init__(self) -> None:
        if self.t.tzinfo is None:
            raise ValueError(f"BatchState.t must be timezone-aware UTC, got {self.t!r}")
        if self.row.height != 1:
            raise ValueError(f"BatchState.row must hold exactly one feature row, got {self.row.height}")


def _floor(t: datetime, bucket_min: int) -> datetime:
    w = timedelta(minutes=bucket_min)
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    return epoch + ((t.astimezone(timezone.utc) - epoch) // w) * w


def _last_recommended(store: RecommendationStore | None, batch_id: str, t: datetime) -> dict[str, datetime]:
    if store is None:
        return {}
    recs = store.table(batch_id=batch_id).filter(pl.col("created_ts") <= t)
    return {tag: ts for tag, ts in recs.group_by("tag").agg(pl.col("created_ts").max()).iter_rows()}


def _coverage(data: PlantData, batch_id: str, k_end: int) -> dict[str, float]:
    n = max(1, min(k_end, round(COVERAGE_WINDOW_H * 60 / data.bucket_min)))
    recent = data.buckets.filter(pl.col("batch_id") == batch_id, pl.col("k") >= k_end - n, pl.col("k") < k_end,
                                 pl.col("n_good") > 0)
    seen = dict(recent.group_by("tag").agg(pl.len()).iter_rows())
    return {tag: seen.get(tag, 0) / n for tag in data.online_tags}


def states_from_data(data: PlantData, at: Mapping[str, datetime],
                     store: RecommendationStore | None = None) -> dict[str, BatchState]:
    """BatchStates of batches in `data` at their own as-of times (one vectorised feature pass)."""
    grid = {b: _floor(t, data.bucket_min) for b, t in at.items()}
    when = pl.DataFrame({"batch_id": list(grid), "_t": list(grid.values())}, schema={"batch_id": pl.String,
                                                                                       "_t": TS_DTYPE})
    b = data.batches.join(when, on="batch_id").filter(pl.col("_t") > pl.col("start_ts"))
    missing = sorted(set(grid) - set(b["batch_id"]))
    if missing:
        raise KeyError(f"no started batch {missing[0]!r} before its as-of time (of {len(missing)} asked)")
    b = b.with_columns(data_end=pl.col("_t")).with_columns(
        data_h=(pl.col("data_end") - pl.col("start_ts")).dt.total_seconds() / 3600.0)
    k_end = ((pl.col("_t").dt.epoch("us") // (data.bucket_min * 60_000_000))
             - (pl.col("start_ts").dt.epoch("us") // (data.bucket_min * 60_000_000))).cast(pl.Int32)
    keep = b.select("batch_id", k_end=k_end)
    d = replace(data.select(b["batch_id"]), batches=b.drop("_t"))
    rows = feature_rows(d, keep)
    out: dict[str, BatchState] = {}
    for info in b.iter_rows(named=True):
        bid = info["batch_id"]
        row = rows.filter(pl.col("batch_id") == bid)
        t = at[bid]
        changes = d.setpoints.filter(pl.col("batch_id") == bid, pl.col("ts") <= t)
        # in force at t itself, not at the bucket boundary: a change since then must bound the next step
        now = dict(changes.group_by("tag", maintain_order=True).agg(pl.col("value").last()).iter_rows())
        sp = {tag: now.get(tag) for tag in data.setpoint_tags}
        last = {tag: ts for tag, ts in changes.group_by("tag").agg(pl.col("ts").max()).iter_rows()}
        for tag, ts in _last_recommended(store, bid, t).items():
            last[tag] = max(ts, last[tag]) if tag in last else ts
        k = int(keep.filter(pl.col("batch_id") == bid)["k_end"][0])
        out[bid] = BatchState(bid, info["unit"], info["unit_kind"], t, float(row["t_h"][0]), float(info["planned_h"]),
                              info["start_ts"], row, sp, changes.select("tag", "ts", "value"), last,
                              _coverage(d, bid, k))
    return out


def load_states(hist: Historian, records: Records, site: Site, at: Mapping[str, datetime],
                store: RecommendationStore | None = None, bucket_min: int = 10) -> dict[str, BatchState]:
    """BatchStates of running batches at their as-of times, from the historian, records and earlier advice."""
    until = max(at.values())
    data = load_plant_data(hist, records, site, sorted(at), until=until, bucket_min=bucket_min)
    return states_from_data(data, at, store)


def load_state(hist: Historian, records: Records, site: Site, batch_id: str, t: datetime,
               store: RecommendationStore | None = None, bucket_min: int = 10) -> BatchState:
    """The BatchState of one batch at t."""
    return load_states(hist, records, site, {batch_id: t}, store, bucket_min)[batch_id]
