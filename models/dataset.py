"""What the models learn from, read from the historian and the batch records (never from the twin).

Telemetry is aggregated into buckets aligned to each batch's start (bucket k covers
[start + k*w, start + (k+1)*w)); only GOOD/UNCERTAIN values enter the sums, BAD/STALE/MISSING
samples are counted, never filled. Every feature and label is computed from these frames.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timezone

import polars as pl

from plant.historian import Historian
from plant.records import BATCH_SCHEMA, Records
from plant.samples import TS_DTYPE, Quality
from plant.site import Site

USABLE = (Quality.GOOD.value, Quality.UNCERTAIN.value)
FIXED = 1e5  # bucket sums are exact integers of 1e-5 units (values are resolved to 1e-5 of their unit)
YIELD_ATTRIBUTE = "TOTAL_VIABLE_CELLS"
_DEFAULT_PHASES = (24.0, 72.0)  # transduction and feed start (h) when the site has no recipe for a batch
BUCKET_SCHEMA: dict[str, pl.DataType] = {
    "batch_id": pl.String(), "tag": pl.String(), "k": pl.Int32(), "n_good": pl.Int32(), "n_bad": pl.Int32(),
    "s1": pl.Float64(), "s2": pl.Float64(), "vmin": pl.Float64(), "vmax": pl.Float64(), "n_out": pl.Int32(),
}


@dataclass(frozen=True)
class PlantData:
    """Per-batch frames the feature builder works on; frames are sorted by batch_id (then time)."""

    batches: pl.DataFrame  # batch_id, unit, unit_kind, recipe, kind, start_ts, end_ts, planned_h, data_h, phases
    buckets: pl.DataFrame  # BUCKET_SCHEMA: per batch, tag and bucket k (0 holds the start)
    offline: pl.DataFrame  # batch_id, ts, analyte, value
    setpoints: pl.DataFrame  # batch_id, tag, ts, value
    covariates: pl.DataFrame  # batch_id + one column per covariate (text stays text)
    outcomes: pl.DataFrame  # batch_id, log10_tvc
    deviations: pl.DataFrame  # kind, unit, batch_id, start_ts, end_ts
    online_tags: tuple[str, ...]  # measured unit tags (short names)
    controls: dict[str, str]  # setpoint tag -> the measured tag it steers
    setpoint_tags: tuple[str, ...]
    bucket_min: int

    def select(self, batch_ids: Iterable[str]) -> PlantData:
        """The same data restricted to some batches (deviations stay as they are)."""
        ids = pl.Series(list(batch_ids), dtype=pl.String)
        if ids.n_unique() == self.batches.height and ids.is_in(self.batches["batch_id"].implode()).all():
            return self  # already exactly these batches (the single running batch of inference)
        f = {name: getattr(self, name).filter(pl.col("batch_id").is_in(ids.implode()))
             for name in ("batches", "buckets", "offline", "setpoints", "covariates", "outcomes")}
        return replace(self, **f)

    def truncate(self, batch_id: str, until: datetime) -> PlantData:
        """One batch as it was known at `until` (telemetry/offline before it, setpoints up to it)."""
        d = self.select([batch_id])
        start = d.batches["start_ts"][0]
        k_end = int((until - start).total_seconds() // (60 * self.bucket_min))
        at = pl.lit(until, dtype=TS_DTYPE)
        return replace(d, buckets=d.buckets.filter(pl.col("k") < k_end), offline=d.offline.filter(pl.col("ts") < at),
                       setpoints=d.setpoints.filter(pl.col("ts") <= at), outcomes=d.outcomes.clear())


def site_tags(site: Site) -> tuple[tuple[str, ...], dict[str, str], tuple[str, ...]]:
    """(measured unit tags, setpoint -> controlled tag, setpoint tags) declared by the site, sorted."""
    online: set[str] = set()
    controls: dict[str, str] = {}
    sps: set[str] = set()
    for unit in site.units:
        for t in site.unit_tags(unit):
            if t.controllable:
                sps.add(t.short)
                if t.controls:
                    controls[t.short] = t.controls.split(".", 1)[1]
            else:
                online.add(t.short)
    return tuple(sorted(online)), dict(sorted(controls.items())), tuple(sorted(sps))


def _limits(site: Site) -> pl.DataFrame:
    rows = [(t.name, t.alert_low, t.alert_high) for u in site.units for t in site.unit_tags(u) if not t.controllable]
    return pl.DataFrame(rows, schema={"tag": pl.String, "lo": pl.Float64, "hi": pl.Float64}, orient="row")


def _batches(records: Records, site: Site, ids: list[str] | None, until: datetime) -> pl.DataFrame:
    if ids is not None and len(ids) <= 5:
        known = [records.get_batch(i) for i in ids]  # KeyError names an unknown batch id
        b = pl.DataFrame([{f: getattr(r, f) for f in BATCH_SCHEMA} for r in known], schema=BATCH_SCHEMA)
    else:
        b = records.batches()
    if ids is not None:
        b = b.filter(pl.col("batch_id").is_in(ids))
    b = b.filter(pl.col("status") != "planned", pl.col("start_ts") < until)
    kinds = {u.id: u.kind for u in site.units.values()}
    phases = {r.id: (r.transduction_day * 24.0, r.feed_start_day * 24.0) for r in site.recipes.values()}
    end = pl.coalesce(pl.col("end_ts"), pl.lit(until, dtype=TS_DTYPE))
    return (
        b.with_columns(
            unit_kind=pl.col("unit").replace_strict(kinds, default="unknown"),
            kind=pl.col("kind").cast(pl.String),
            planned_h=(pl.col("planned_end_ts") - pl.col("start_ts")).dt.total_seconds() / 3600.0,
            data_end=pl.min_horizontal(end, pl.lit(until, dtype=TS_DTYPE)),
            transduction_h=pl.col("recipe").replace_strict({k: v[0] for k, v in phases.items()},
                                                           default=_DEFAULT_PHASES[0], return_dtype=pl.Float64),
            feed_h=pl.col("recipe").replace_strict({k: v[1] for k, v in phases.items()},
                                                   default=_DEFAULT_PHASES[1], return_dtype=pl.Float64),
        )
        .with_columns(data_h=(pl.col("data_end") - pl.col("start_ts")).dt.total_seconds() / 3600.0)
        .select("batch_id", "unit", "unit_kind", "recipe", "kind", "start_ts", "end_ts", "data_end", "planned_h",
                "data_h", "transduction_h", "feed_h")
        .sort("batch_id")
    )


def read_buckets(hist: Historian, batches: pl.DataFrame, tags: tuple[str, ...], limits: pl.DataFrame,
                 bucket_min: int) -> pl.DataFrame:
    """Bucket statistics of every batch's online tags (no rows for buckets without samples).

    Buckets are aligned to the UTC clock, so one group_by on an integer key serves every batch at once
    (a per-batch alignment made this 4x slower); k counts buckets from the one holding the batch start.
    """
    units = sorted(set(batches["unit"]))
    names = [f"{u}.{t}" for u in units for t in tags]
    if batches.height == 0 or not names:
        return pl.DataFrame(schema=BUCKET_SCHEMA)
    bucket_us = bucket_min * 60 * 1_000_000
    lim = {r["tag"]: (r["lo"], r["hi"]) for r in limits.iter_rows(named=True)}
    codes = pl.LazyFrame({"code": range(len(names)), "lo": [lim.get(n, (None, None))[0] for n in names],
                          "hi": [lim.get(n, (None, None))[1] for n in names]},
                         schema={"code": pl.Int64, "lo": pl.Float64, "hi": pl.Float64})
    code = pl.col("tag").cast(pl.Enum(names)).to_physical().cast(pl.Int64)
    usable = pl.col("quality").is_in(USABLE) & pl.col("value").is_not_null() & pl.col("value").is_not_nan()
    v = pl.col("v")
    stats = (  # a join on the integer code: a gather inside the aggregation was 9x slower
        hist.scan(names, batches["start_ts"].min(), batches["data_end"].max())
        .select(code=code, b=pl.col("ts").dt.epoch("us") // bucket_us, u=usable, v=pl.when(usable).then("value"))
        .join(codes, on="code", how="left")
        .with_columns(out=((v < pl.col("lo")) | (v > pl.col("hi"))).fill_null(False))
        .with_columns(r=(v * FIXED).round().cast(pl.Int128))
        .group_by("code", "b")
        # sums in fixed point (1e-5 units): integer addition is exact in any order, so the same samples give the
        # same features however the historian files were written or the engine split the work
        .agg(n_good=pl.col("u").sum().cast(pl.Int32), n_bad=(~pl.col("u")).sum().cast(pl.Int32),
             s1=pl.col("r").sum(), s2=(pl.col("r") * pl.col("r")).sum(), vmin=v.min(), vmax=v.max(),
             n_out=pl.col("out").sum().cast(pl.Int32))
        .with_columns(s1=pl.col("s1").cast(pl.Float64) / FIXED, s2=pl.col("s2").cast(pl.Float64) / FIXED**2)
        .collect()
    )
    split = pl.DataFrame({"code": range(len(names)), "unit": [n.split(".", 1)[0] for n in names],
                          "tag": [n.split(".", 1)[1] for n in names]}, schema_overrides={"code": pl.Int64})
    windows = batches.select(
        "unit", "batch_id", b0=pl.col("start_ts").dt.epoch("us") // bucket_us,
        b1=(pl.col("data_end").dt.epoch("us") - 1) // bucket_us,
    ).sort("b0")
    return (
        stats.join(split, on="code").sort("b")
        .join_asof(windows, left_on="b", right_on="b0", by="unit", strategy="backward", check_sortedness=False)
        .filter(pl.col("b") <= pl.col("b1"))
        .with_columns(k=(pl.col("b") - pl.col("b0")).cast(pl.Int32), s1=pl.when(pl.col("n_good") > 0).then("s1"),
                      s2=pl.when(pl.col("n_good") > 0).then("s2"))
        .select(list(BUCKET_SCHEMA))
        .sort("batch_id", "tag", "k")
    )


def _outcomes(records: Records, ids: pl.Series, per) -> pl.DataFrame:  # noqa: ANN001
    rel = per(records.release_results).filter(pl.col("attribute") == YIELD_ATTRIBUTE,
                                           pl.col("batch_id").is_in(ids.implode()),
                                           pl.col("value").is_not_null(), pl.col("value") > 0)
    return rel.select("batch_id", log10_tvc=pl.col("value").log(10)).sort("batch_id")


def load_plant_data(hist: Historian, records: Records, site: Site, batch_ids: Iterable[str] | None = None,
                    until: datetime | None = None, bucket_min: int = 10) -> PlantData:
    """Read batches (all, or some) as known at `until` (default: now) into PlantData."""
    until = (until or datetime.now(timezone.utc)).astimezone(timezone.utc)
    ids = None if batch_ids is None else list(batch_ids)
    batches = _batches(records, site, ids, until)
    online, controls, sps = site_tags(site)
    buckets = read_buckets(hist, batches, online, _limits(site), bucket_min)
    bid = batches["batch_id"]
    at = pl.lit(until, dtype=TS_DTYPE)
    few = ids is not None and 0 < bid.len() <= 5  # a running batch: per-batch queries keep inference fast
    per = (lambda f, **kw: pl.concat([f(batch_id=b, **kw) for b in bid])) if few else (lambda f, **kw: f(**kw))
    offline = (per(records.offline_results).filter(pl.col("batch_id").is_in(bid.implode()), pl.col("ts") < at)
               .select("batch_id", "ts", "analyte", "value").sort("batch_id", "analyte", "ts"))
    setpoints = (per(records.setpoints).filter(pl.col("batch_id").is_in(bid.implode()), pl.col("ts") <= at)
                 .select("batch_id", "tag", "ts", "value").with_row_index("order")
                 .sort("batch_id", "tag", "ts", "order").drop("order"))
    cov = per(records.covariates, wide=True) if bid.len() else records.covariates(wide=True)
    cov = cov.filter(pl.col("batch_id").is_in(bid.implode())).sort("batch_id") if cov.width > 0 else \
        pl.DataFrame({"batch_id": bid})
    labels = (per(records.fault_labels) if few else records.fault_labels()).filter(
        pl.col("unit").is_not_null(), pl.col("start_ts") < at)
    deviations = labels.select("kind", "unit", "batch_id", "start_ts", "end_ts").sort("unit", "start_ts", "kind")
    outcomes = _outcomes(records, bid, per)
    return PlantData(batches=batches, buckets=buckets, offline=offline, setpoints=setpoints, covariates=cov,
                     outcomes=outcomes, deviations=deviations, online_tags=online, controls=controls,
                     setpoint_tags=sps, bucket_min=bucket_min)


def n_buckets(hours: float, bucket_min: int) -> int:
    """Whole buckets in a span of hours."""
    return int(math.floor(hours * 60 / bucket_min + 1e-9))
