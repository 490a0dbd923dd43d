"""Targets and labels: harvest yield, "a deviation starts within H hours", and the simple limit alarm."""

from __future__ import annotations

import polars as pl

from models.dataset import PlantData

LIMIT_MIN_OUT = 3  # minutes beyond an alert limit within one bucket that raise the simple limit alarm


def yield_target(data: PlantData, rows: pl.DataFrame) -> pl.DataFrame:
    """rows + log10_tvc (harvest viable cells, log10); rows of batches without an outcome are dropped."""
    return rows.join(data.outcomes, on="batch_id", how="inner", maintain_order="left")


def online_deviations(data: PlantData, no_signature: tuple[str, ...]) -> pl.DataFrame:
    """Deviations with an online signature, matched to the batch running on their unit when they started."""
    dev = data.deviations.filter(~pl.col("kind").is_in(list(no_signature)))
    b = data.batches.select("batch_id", "unit", "start_ts", "data_end")
    return (
        dev.drop("batch_id").join(b, on="unit")
        .filter(pl.col("start_ts") < pl.col("data_end"), pl.col("start_ts_right") <= pl.col("start_ts"))
        .select("batch_id", "unit", "kind", "start_ts", "end_ts")
        .sort("batch_id", "start_ts", "kind")
    )


def warning_labels(rows: pl.DataFrame, deviations: pl.DataFrame, horizon_h: float, grace_h: float) -> pl.DataFrame:
    """rows (batch_id, t, ...) + y (a deviation starts within H h or is under way), ignore (just after one),
    kind and event (index of the deviation) of positive rows.

    Rows in [end, end + grace) are marked `ignore`: the process is recovering, neither normal nor faulty.
    """
    h = pl.duration(microseconds=int(horizon_h * 3600e6))
    g = pl.duration(microseconds=int(grace_h * 3600e6))
    key = rows.select("batch_id", "t").unique()
    devs = deviations.select("batch_id", "kind", "start_ts", "end_ts").with_row_index("event")
    m = key.join(devs, on="batch_id")
    pos = m.filter(pl.col("t") >= pl.col("start_ts") - h, pl.col("t") < pl.col("end_ts"))
    pos = pos.sort("start_ts", "event").group_by("batch_id", "t").agg(pl.col("kind").first(),
                                                                      pl.col("event").first())
    ign = m.filter(pl.col("t") >= pl.col("end_ts"), pl.col("t") < pl.col("end_ts") + g).select("batch_id", "t").unique()
    out = rows.join(pos, on=["batch_id", "t"], how="left", maintain_order="left")
    out = out.join(ign.with_columns(ignore=pl.lit(True)), on=["batch_id", "t"], how="left", maintain_order="left")
    y = pl.col("kind").is_not_null()
    return out.with_columns(y=y.cast(pl.Int8), ignore=pl.col("ignore").fill_null(False) & ~y)


def limit_alarm(data: PlantData) -> pl.DataFrame:
    """(batch_id, k_end, limit_alarm): a tag beyond an alert limit >= 3 min, or only BAD samples, in bucket k_end-1."""
    b = data.buckets
    bad = (pl.col("n_out") >= LIMIT_MIN_OUT) | ((pl.col("n_good") == 0) & (pl.col("n_bad") > 0))
    return (b.group_by("batch_id", "k").agg(limit_alarm=bad.any())
            .select("batch_id", k_end=(pl.col("k") + 1).cast(pl.Int32), limit_alarm="limit_alarm")
            .sort("batch_id", "k_end"))


def episodes(frame: pl.DataFrame, flag: str) -> pl.DataFrame:
    """Rising edges of a boolean column per batch (frame sorted by batch_id, t): one row per alarm episode."""
    prev = pl.col(flag).shift(1).over("batch_id").fill_null(False)
    return frame.filter(pl.col(flag) & ~prev).select("batch_id", "t")
