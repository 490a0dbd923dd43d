"""Batch features "as of" a time t, built only from data before t (telemetry, offline) or up to t (setpoints).

A feature row is keyed by (batch_id, k_end): it sees telemetry buckets k < k_end, offline results with
ts < t and setpoint changes with ts <= t, where t = the end of bucket k_end - 1. Missing data stays null
(LightGBM routes nulls natively); staleness and the BAD fraction are features of their own.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

import polars as pl

from models.dataset import PlantData
from models.online import online_features
from plant.samples import TS_DTYPE

OFFLINE_ANALYTES = ("VCD", "VIAB", "GLC", "LAC", "GLN", "NH4", "PH", "CAR_PCT")
KEYS = ("batch_id", "k_end", "t", "t_h")
# never model inputs: keys, targets, labels and training bookkeeping
LABEL_COLUMNS = ("batch_id", "k_end", "t", "data_h", "y", "ignore", "kind", "event", "weight", "fit", "excused",
                 "log10_tvc")


def _grid(data: PlantData) -> pl.DataFrame:
    """One row per batch and bucket k (0 .. last bucket with data time), with the as-of time t of row k."""
    w = data.bucket_min * 60_000_000
    b = data.batches.with_columns(b0=pl.col("start_ts").dt.epoch("us") // w,
                                  b1=(pl.col("data_end").dt.epoch("us") - 1) // w)
    g = b.select("batch_id", "start_ts", "planned_h", "transduction_h", "feed_h", "b0",
                 k=pl.int_ranges(0, pl.col("b1") - pl.col("b0") + 1, dtype=pl.Int32)).explode("k")
    t = ((pl.col("b0") + pl.col("k") + 1) * w).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    return g.with_columns(t=t).with_columns(
        t_h=(pl.col("t") - pl.col("start_ts")).dt.total_seconds() / 3600.0, k_end=pl.col("k") + 1,
    ).sort("batch_id", "k")


def _setpoint_features(data: PlantData, grid: pl.DataFrame) -> pl.DataFrame:
    """Setpoints in force at t (changes at or before t) and their time-weighted mean so far, per tag."""
    out = grid.select("batch_id", "k")
    if not data.setpoint_tags:
        return out
    tags = pl.DataFrame({"tag": list(data.setpoint_tags)})
    g = grid.select("batch_id", "k", "t").join(tags, how="cross").sort("t")
    s = data.setpoints.filter(pl.col("tag").is_in(tags["tag"].implode())).sort("batch_id", "tag", "ts",
                                                                               maintain_order=True)
    # integral of the step function from the first change (the recipe, at the start) to each change
    by = ("batch_id", "tag")
    held_h = (pl.col("ts").shift(-1).over(by) - pl.col("ts")).dt.total_seconds() / 3600.0
    s = s.with_columns(area=(pl.col("value") * held_h).fill_null(0.0).cum_sum().over(by) - pl.col("value") * held_h
                       .fill_null(0.0), first=pl.col("ts").first().over(by))
    # two changes at one instant: the later-recorded one is in force (it held the earlier one for 0 h)
    s = s.unique(["batch_id", "tag", "ts"], keep="last", maintain_order=True)
    s = s.select("batch_id", "tag", pl.col("ts").alias("t"), pl.col("ts").alias("since"), "value", "area",
                 "first").sort("t")
    g = g.join_asof(s, on="t", by=["batch_id", "tag"], strategy="backward", check_sortedness=False)
    # time-weighted mean of the setpoint since the start: exact, whatever rows are asked for
    span = (pl.col("t") - pl.col("first")).dt.total_seconds() / 3600.0
    now = (pl.col("t") - pl.col("since")).dt.total_seconds() / 3600.0
    g = g.with_columns(avg=pl.when(span > 0).then((pl.col("area") + pl.col("value") * now) / span)
                       .otherwise(pl.col("value")))
    wide = g.pivot(on="tag", index=["batch_id", "k"], values=["value", "avg"], aggregate_function="first")
    names = {f"value_{t}": f"sp_{t}" for t in data.setpoint_tags} | {f"avg_{t}": f"sp_{t}_avg"
                                                                     for t in data.setpoint_tags}
    wide = wide.rename({k: v for k, v in names.items() if k in wide.columns})
    cols = [f"sp_{t}" for t in data.setpoint_tags] + [f"sp_{t}_avg" for t in data.setpoint_tags]
    return out.join(wide, on=["batch_id", "k"], how="left", maintain_order="left").select(
        "batch_id", "k", *[pl.col(c) if c in wide.columns else pl.lit(None, pl.Float64).alias(c) for c in cols])


def _offline_table(data: PlantData) -> pl.DataFrame:
    """Per offline sample: value, previous value, hours between; for VCD the running integral and growth fits."""
    o = data.offline.filter(pl.col("analyte").is_in(list(OFFLINE_ANALYTES))).sort("batch_id", "analyte", "ts")
    by = ("batch_id", "analyte")
    dt = (pl.col("ts") - pl.col("ts").shift(1).over(by)).dt.total_seconds() / 3600.0
    o = o.with_columns(prev=pl.col("value").shift(1).over(by), dt_h=dt)
    # integral of viable cell density (trapezoid), 1e6 cells x h / mL; computed for every analyte, kept for VCD
    area = ((pl.col("value") + pl.col("prev")) / 2 * pl.col("dt_h") / 1e6).fill_null(0.0)
    mu = (pl.col("value") / pl.col("prev")).log() / pl.col("dt_h")  # specific growth rate, 1/h
    o = o.with_columns(ivcd=area.cum_sum().over(by), VCD_mu_h=pl.when(pl.col("value") > 0, pl.col("prev") > 0).then(mu))
    return o.with_columns(_vcd_fit(4))


def _vcd_fit(n: int) -> list[pl.Expr]:
    """Least-squares growth rate and fitted ln VCD over the last n counts: one count is 7 % noisy."""
    x = pl.col("ts").dt.epoch("s").cast(pl.Float64) / 3600.0
    x = x - x.first().over("batch_id", "analyte")
    y = pl.when(pl.col("value") > 0).then(pl.col("value").log())
    ok = y.is_not_null()
    xs = pl.when(ok).then(x)

    def s(e: pl.Expr) -> pl.Expr:
        return e.fill_null(0.0).rolling_sum(n, min_samples=1).over("batch_id", "analyte")

    m, sx, sy, sxx, sxy = s(ok.cast(pl.Float64)), s(xs), s(y), s(xs * xs), s(xs * y)
    den = m * sxx - sx * sx
    slope = (m * sxy - sx * sy) / den
    fit_now = (sy - slope * sx) / m + slope * x
    good = (m >= 3) & (den > 1e-9)
    return [pl.when(good).then(slope).alias("VCD_mu_fit"), pl.when(good).then(fit_now).alias("VCD_ln_fit")]


_VCD_ONLY = ("ivcd", "VCD_mu_h", "VCD_mu_fit", "VCD_ln_fit")
_PH_ONLY = ("ph_off_on", "ph_off_on_prev")


def _offline_features(data: PlantData, grid: pl.DataFrame, ph_online: pl.DataFrame) -> pl.DataFrame:
    """Last offline result of every analyte strictly before t (a sample taken at t is not yet known at t)."""
    o = _offline_table(data).join(ph_online, on=["batch_id", "ts"], how="left", maintain_order="left")
    # offline minus online pH in the bucket the sample was taken: a drifting probe shows here
    o = o.with_columns(ph_off_on=pl.when(pl.col("analyte") == "PH").then(pl.col("value") - pl.col("ph_on")))
    o = o.with_columns(ph_off_on_prev=pl.col("ph_off_on").shift(1).over("batch_id", "analyte"))
    o = o.select("batch_id", "analyte", pl.col("ts").alias("t"), pl.col("ts").alias("sample_ts"),
                 pl.col("value").alias("last"), "prev", "dt_h", *_VCD_ONLY, *_PH_ONLY).sort("t")
    analytes = pl.DataFrame({"analyte": list(OFFLINE_ANALYTES)})
    g = grid.select("batch_id", "k", "t").join(analytes, how="cross").sort("t")
    g = g.join_asof(o, on="t", by=["batch_id", "analyte"], strategy="backward", allow_exact_matches=False,
                    check_sortedness=False)
    g = g.with_columns(age_h=(pl.col("t") - pl.col("sample_ts")).dt.total_seconds() / 3600.0,
                       rate_h=(pl.col("last") - pl.col("prev")) / pl.col("dt_h"))
    fields = ("last", "prev", "age_h", "rate_h")
    wide = g.pivot(on="analyte", index=["batch_id", "k"], values=[*fields, *_VCD_ONLY, *_PH_ONLY],
                   aggregate_function="first")
    cols = {f"{f}_{a}": f"off_{a}_{f}" for a in OFFLINE_ANALYTES for f in fields}
    cols |= {f"{f}_VCD": f"off_{f}" for f in _VCD_ONLY} | {f"{f}_PH": f"off_{f}" for f in _PH_ONLY}
    exprs = [pl.col(src).alias(dst) if src in wide.columns else pl.lit(None, pl.Float64).alias(dst)
             for src, dst in cols.items()]
    out = grid.select("batch_id", "k").join(wide, on=["batch_id", "k"], how="left", maintain_order="left")
    return out.select("batch_id", "k", *exprs)


def _ph_online_at_samples(data: PlantData) -> pl.DataFrame:
    """Online pH (bucket mean) in the bucket holding each offline pH sample."""
    w = data.bucket_min * 60_000_000
    s = data.offline.filter(pl.col("analyte") == "PH").join(data.batches.select("batch_id", "start_ts"), on="batch_id")
    s = s.select("batch_id", "ts", k=((pl.col("ts").dt.epoch("us") // w) - (pl.col("start_ts").dt.epoch("us") // w))
                 .cast(pl.Int32))
    ph = data.buckets.filter(pl.col("tag") == "PH", pl.col("n_good") > 0).select(
        "batch_id", "k", ph_on=pl.col("s1") / pl.col("n_good"))
    return s.join(ph, on=["batch_id", "k"], how="left").select("batch_id", "ts", "ph_on")


def _static_features(data: PlantData) -> pl.DataFrame:
    cov = data.covariates.rename({c: f"cov_{c}" for c in data.covariates.columns if c != "batch_id"})
    b = data.batches.select("batch_id", "recipe", "unit_kind")
    return b.join(cov, on="batch_id", how="left")


def _features(data: PlantData, keep: pl.DataFrame) -> pl.DataFrame:
    g = _grid(data).join(keep, on=["batch_id", "k_end"], how="semi", maintain_order="left")
    g = pl.concat([g, online_features(data, g.select("batch_id", "k"))], how="horizontal")
    g = g.join(_setpoint_features(data, g), on=["batch_id", "k"], how="left", maintain_order="left")
    return g.join(_offline_features(data, g, _ph_online_at_samples(data)), on=["batch_id", "k"], how="left",
                  maintain_order="left")


def _derived(data: PlantData) -> list[pl.Expr]:
    out = [
        (pl.col("planned_h") - pl.col("t_h")).alias("remaining_h"),
        (pl.col("t_h") / pl.col("planned_h")).alias("t_frac"),
        pl.col("off_VCD_last").log10().alias("off_VCD_log10"),
        # a probe drifting faster than the natural ~0.005 pH/day shows as a change between daily samples
        (pl.col("off_ph_off_on") - pl.col("off_ph_off_on_prev")).alias("off_ph_off_on_change"),
    ]
    if "WEIGHT" in data.online_tags:  # viable cells in the vessel now: VCD (/mL) x culture mass (kg ~ L)
        tvc = (pl.col("off_VCD_last") * pl.col("WEIGHT_last") * 1000.0).log10()
        out.append(tvc.alias("tvc_log10"))
        proj = tvc + pl.col("off_VCD_mu_h").clip(-0.1, 0.1) * (pl.col("planned_h") - pl.col("t_h")) / math.log(10)
        out.append(proj.alias("tvc_log10_proj"))
        # the same from the 4-count fit: smoothed cells now, extrapolated at the fitted rate
        fit = (pl.col("off_VCD_ln_fit") / math.log(10)) + (pl.col("WEIGHT_last") * 1000.0).log10()
        out.append(fit.alias("tvc_log10_fit"))
        remaining = (pl.col("planned_h") - pl.col("t_h"))
        out.append((fit + pl.col("off_VCD_mu_fit").clip(-0.1, 0.1) * remaining / math.log(10)).alias("tvc_log10_fit_proj"))
    for sp, pv in data.controls.items():
        if pv in data.online_tags:
            out.append((pl.col(f"{pv}_mean_1h") - pl.col(f"sp_{sp}")).alias(f"{pv}_dev_sp_1h"))
            # heating and cooling faults share one feature: twice the examples for one split
            out.append((pl.col(f"{pv}_mean_1h") - pl.col(f"sp_{sp}")).abs().alias(f"{pv}_absdev_sp_1h"))
            out.append((pl.col(f"{pv}_mean_6h") - pl.col(f"sp_{sp}_avg")).alias(f"{pv}_dev_sp_6h"))
    return out


def feature_rows(data: PlantData, keep: pl.DataFrame) -> pl.DataFrame:
    """Features for the (batch_id, k_end) rows in `keep`, sorted by batch_id, k_end."""
    keep = keep.select("batch_id", pl.col("k_end").cast(pl.Int32))
    g = _features(data.select(keep["batch_id"].unique()), keep)
    g = g.join(_static_features(data), on="batch_id", how="left", maintain_order="left")
    g = g.with_columns(_derived(data))
    drop = ("start_ts", "b0", "k", "transduction_h", "feed_h")
    return g.drop([c for c in drop if c in g.columns]).sort("batch_id", "k_end")


def rows_every(data: PlantData, step_min: int, first_h: float = 0.0) -> pl.DataFrame:
    """(batch_id, k_end) every step_min minutes from first_h on, up to each batch's data end."""
    per = step_min // data.bucket_min
    if per < 1 or step_min % data.bucket_min:
        raise ValueError(f"step_min = {step_min} must be a multiple of bucket_min = {data.bucket_min}")
    g = _grid(data).filter(pl.col("k_end") % per == 0, pl.col("t_h") >= first_h)
    return g.select("batch_id", pl.col("k_end").cast(pl.Int32))


def rows_at_hours(data: PlantData, hours: Sequence[float]) -> pl.DataFrame:
    """(batch_id, k_end) of the last bucket boundary at or before start + h, for each h inside the data."""
    w = data.bucket_min * 60_000_000
    hs = pl.DataFrame({"h": list(hours)}, schema={"h": pl.Float64})
    b = data.batches.select("batch_id", s=pl.col("start_ts").dt.epoch("us"), e=pl.col("data_end").dt.epoch("us"))
    return (
        b.join(hs, how="cross")
        .with_columns(k_end=((pl.col("s") + (pl.col("h") * 3.6e9).cast(pl.Int64)) // w - pl.col("s") // w),
                      k_max=(pl.col("e") - 1) // w - pl.col("s") // w + 1)
        .filter(pl.col("k_end") >= 1, pl.col("k_end") <= pl.col("k_max"))
        .select("batch_id", pl.col("k_end").cast(pl.Int32)).unique().sort("batch_id", "k_end")
    )


def as_of(data: PlantData, batch_id: str, t: datetime) -> pl.DataFrame:
    """One feature row for a batch as known at t (t is floored to the bucket grid)."""
    w = timedelta(minutes=data.bucket_min)
    epoch = datetime(1970, 1, 1, tzinfo=t.tzinfo)
    t_grid = epoch + ((t - epoch) // w) * w
    d = data.truncate(batch_id, t_grid)
    if d.batches.height == 0:
        raise KeyError(f"unknown batch id: {batch_id}")
    start = d.batches["start_ts"][0]
    if t_grid <= start:
        raise ValueError(f"{batch_id}: t = {t.isoformat()} is not after the batch start {start.isoformat()}")
    d = _with_data_end(d, t_grid)
    rows = _grid(d).select("batch_id", "k_end").tail(1)
    return feature_rows(d, rows)


def _with_data_end(d: PlantData, t: datetime) -> PlantData:
    from dataclasses import replace

    b = d.batches.with_columns(data_end=pl.lit(t, dtype=TS_DTYPE))
    b = b.with_columns(data_h=(pl.col("data_end") - pl.col("start_ts")).dt.total_seconds() / 3600.0)
    return replace(d, batches=b)


def feature_columns(frame: pl.DataFrame, exclude: Iterable[str] = ()) -> list[str]:
    """Model inputs of a feature frame: everything but keys, labels and bookkeeping columns."""
    skip = {*LABEL_COLUMNS, *exclude}
    return [c for c in frame.columns if c not in skip]
