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
    out = grid.select("batch_id", "k", "t")
    for sp in data.setpoint_tags:
        s = data.setpoints.filter(pl.col("tag") == sp).select("batch_id", pl.col("ts").alias("t"),
                                                               pl.col("value").alias(f"sp_{sp}"))
        out = out.sort("t").join_asof(s.sort("t"), on="t", by="batch_id", strategy="backward",
                                      check_sortedness=False)
    out = out.sort("batch_id", "k")
    avg = [(pl.col(f"sp_{sp}").cum_sum().over("batch_id") / pl.col(f"sp_{sp}").cum_count().over("batch_id"))
           .alias(f"sp_{sp}_avg") for sp in data.setpoint_tags]
    return out.with_columns(avg).drop("t")


def _offline_table(data: PlantData, analyte: str) -> pl.DataFrame:
    """Per offline sample: value, previous value, hours between, and (VCD) the running integral."""
    o = data.offline.filter(pl.col("analyte") == analyte).sort("batch_id", "ts")
    dt = (pl.col("ts") - pl.col("ts").shift(1).over("batch_id")).dt.total_seconds() / 3600.0
    o = o.with_columns(prev=pl.col("value").shift(1).over("batch_id"), dt_h=dt)
    if analyte == "VCD":  # integral of viable cell density (trapezoid), 1e6 cells x h / mL
        area = ((pl.col("value") + pl.col("prev")) / 2 * pl.col("dt_h") / 1e6).fill_null(0.0)
        mu = (pl.col("value") / pl.col("prev")).log() / pl.col("dt_h")  # specific growth rate, 1/h
        o = o.with_columns(ivcd=area.cum_sum().over("batch_id"),
                           VCD_mu_h=pl.when(pl.col("value") > 0, pl.col("prev") > 0).then(mu))
        o = o.with_columns(_vcd_fit(4))
    return o


def _vcd_fit(n: int) -> list[pl.Expr]:
    """Least-squares growth rate and fitted ln VCD over the last n counts: one count is 7 % noisy."""
    x = pl.col("ts").dt.epoch("s").cast(pl.Float64) / 3600.0
    x = x - x.first().over("batch_id")
    y = pl.when(pl.col("value") > 0).then(pl.col("value").log())
    ok = y.is_not_null()
    xs = pl.when(ok).then(x)

    def s(e: pl.Expr) -> pl.Expr:
        return e.fill_null(0.0).rolling_sum(n, min_samples=1).over("batch_id")

    m, sx, sy, sxx, sxy = s(ok.cast(pl.Float64)), s(xs), s(y), s(xs * xs), s(xs * y)
    den = m * sxx - sx * sx
    slope = (m * sxy - sx * sy) / den
    fit_now = (sy - slope * sx) / m + slope * x
    good = (m >= 3) & (den > 1e-9)
    return [pl.when(good).then(slope).alias("VCD_mu_fit"), pl.when(good).then(fit_now).alias("VCD_ln_fit")]


def _offline_features(data: PlantData, grid: pl.DataFrame, ph_online: pl.DataFrame) -> pl.DataFrame:
    out = grid.select("batch_id", "k", "t").sort("t")
    for a in OFFLINE_ANALYTES:
        o = _offline_table(data, a)
        if a == "PH":  # offline minus online pH in the bucket the sample was taken: a drifting probe shows here
            o = o.join(ph_online, on=["batch_id", "ts"], how="left").with_columns(
                ph_off_on=pl.col("value") - pl.col("ph_on"))
            o = o.with_columns(ph_off_on_prev=pl.col("ph_off_on").shift(1).over("batch_id"))
        extra = [c for c in ("ivcd", "VCD_mu_h", "VCD_mu_fit", "VCD_ln_fit", "ph_off_on", "ph_off_on_prev")
                 if c in o.columns]
        p = f"off_{a}"
        o = o.select("batch_id", pl.col("ts").alias("t"), pl.col("ts").alias(f"_{a}_ts"),
                     pl.col("value").alias(f"{p}_last"), pl.col("prev").alias(f"{p}_prev"),
                     pl.col("dt_h").alias(f"_{a}_dt"), *[pl.col(c).alias(f"off_{c}") for c in extra]).sort("t")
        # strictly before t: a sample taken at t is not yet known at t
        out = out.join_asof(o, on="t", by="batch_id", strategy="backward", allow_exact_matches=False,
                            check_sortedness=False)
        out = out.with_columns(
            ((pl.col("t") - pl.col(f"_{a}_ts")).dt.total_seconds() / 3600.0).alias(f"{p}_age_h"),
            ((pl.col(f"{p}_last") - pl.col(f"{p}_prev")) / pl.col(f"_{a}_dt")).alias(f"{p}_rate_h"),
        ).drop(f"_{a}_ts", f"_{a}_dt")
    return out.sort("batch_id", "k").drop("t")


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
