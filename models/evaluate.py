"""Honest evaluation on held-out batches (newer than the training ones): yield and early warning.

Yield: RMSE (log10), R2 and interval coverage per culture day, against PLS. Early warning: per fault
with an online signature, detected or not and the lead over the simple limit alarm; false alarm
episodes per batch-day; PCA T2/SPE at its 99 % limits and at the model's false-alarm rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from models.baselines import PCAMonitor, PLSYield
from models.deviation import (
    DeviationModel, batch_days, episode_starts, false_alarm_rate, sustained, threshold_for_rate,
)
from models.yield_model import YieldModel, culture_day


@dataclass(frozen=True)
class YieldEval:
    by_day: pl.DataFrame  # day, n, rmse, rmse_pls, rmse_pls_robust, r2, r2_pls, coverage, width
    predictions: pl.DataFrame  # batch_id, day, t_h, y, pred, lo, hi, pls
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class DeviationEval:
    faults: pl.DataFrame  # one row per fault with an online signature in the held-out batches
    by_kind: pl.DataFrame
    timeline: pl.DataFrame  # batch_id, t, t_h, y, excused, p, alert, limit_alarm, pca_score
    metrics: dict[str, float] = field(default_factory=dict)


def _rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2))) if len(a) else float("nan")


def _r2(y: np.ndarray, p: np.ndarray) -> float:
    ss = float(np.sum((y - y.mean()) ** 2))
    return float(1 - np.sum((y - p) ** 2) / ss) if len(y) > 1 and ss > 0 else float("nan")


def yield_predictions(model: YieldModel, rows: pl.DataFrame) -> pl.DataFrame:
    """Model predictions with interval at rows (features + log10_tvc)."""
    iv = model.predict_interval(rows)
    return rows.select("batch_id", "t_h", y="log10_tvc").with_columns(
        day=pl.Series(culture_day(rows["t_h"].to_numpy())), pred=iv["yield_log10"], lo=iv["lo"], hi=iv["hi"])


def yield_metrics(pred: pl.DataFrame, interval: float) -> tuple[pl.DataFrame, dict[str, float]]:
    """Per-day table and headline metrics of a prediction frame (y, pred, lo, hi, day[, pls, pls_robust])."""
    rows = []
    for (d,), g in pred.sort("day").group_by("day", maintain_order=True):
        y = g["y"].to_numpy()
        r = {"day": int(d), "n": g.height, "rmse": _rmse(g["pred"].to_numpy(), y), "r2": _r2(y, g["pred"].to_numpy()),
             "coverage": float(((g["lo"] <= g["y"]) & (g["y"] <= g["hi"])).mean()),
             "width": float((g["hi"] - g["lo"]).mean())}
        for base in ("pls", "pls_robust"):
            if base in g.columns:
                r[f"rmse_{base}"] = _rmse(g[base].to_numpy(), y)
                r[f"r2_{base}"] = _r2(y, g[base].to_numpy())
        rows.append(r)
    by_day = pl.DataFrame(rows)
    late = pred.filter(pl.col("day") >= 3)
    m: dict[str, float] = {
        "yield_rmse_mean_day3plus": float(by_day.filter(pl.col("day") >= 3)["rmse"].mean() or np.nan),
        "yield_coverage_day3plus": float(((late["lo"] <= late["y"]) & (late["y"] <= late["hi"])).mean() or np.nan),
        "yield_coverage_all": float(((pred["lo"] <= pred["y"]) & (pred["y"] <= pred["hi"])).mean() or np.nan),
        "yield_interval": interval,
    }
    # names the panel's gate reads (dashboards/model_registry.py): *_rmse_log10_day5, *_coverage
    m["yield_coverage"] = m["yield_coverage_day3plus"]
    for r in rows:
        m[f"yield_rmse_day{r['day']}"] = r["rmse"]
        if r["day"] == 5:
            m["yield_rmse_log10_day5"] = r["rmse"]
        m[f"yield_coverage_day{r['day']}"] = r["coverage"]
        for base in ("pls", "pls_robust"):
            if f"rmse_{base}" in r:
                m[f"yield_rmse_{base}_day{r['day']}"] = r[f"rmse_{base}"]
    if "rmse_pls" in by_day.columns:
        late_days = by_day.filter(pl.col("day") >= 3)
        m["yield_days3plus_no_worse_than_pls"] = float((late_days["rmse"] <= late_days["rmse_pls"]).all())
        if "yield_rmse_pls_day5" in m and "yield_rmse_day5" in m:
            m["yield_rmse_ratio_pls_day5"] = m["yield_rmse_day5"] / m["yield_rmse_pls_day5"]
        if "yield_rmse_pls_robust_day5" in m and "yield_rmse_day5" in m:
            m["yield_rmse_ratio_pls_robust_day5"] = m["yield_rmse_day5"] / m["yield_rmse_pls_robust_day5"]
    return by_day, m


def evaluate_yield(model: YieldModel, test_rows: pl.DataFrame, baselines: dict[str, PLSYield],
                   interval: float) -> YieldEval:
    """Day-boundary rows of held-out batches (features + log10_tvc) -> per-day metrics against PLS."""
    pred = yield_predictions(model, test_rows)
    for name, base in baselines.items():
        pred = pred.with_columns(pl.Series(name, base.predict(test_rows)))
    by_day, m = yield_metrics(pred, interval)
    return YieldEval(by_day, pred, m)


def _first_in_window(timeline: pl.DataFrame, faults: pl.DataFrame, flag: str, horizon_h: float,
                     grace_h: float) -> pl.DataFrame:
    h = pl.duration(microseconds=int(horizon_h * 3600e6))
    g = pl.duration(microseconds=int(grace_h * 3600e6))
    m = faults.select("fault", "batch_id", "start_ts", "end_ts").join(
        timeline.filter(pl.col(flag)).select("batch_id", "t"), on="batch_id")
    m = m.filter(pl.col("t") >= pl.col("start_ts") - h, pl.col("t") <= pl.col("end_ts") + g)
    return m.group_by("fault").agg(pl.col("t").min().alias(f"first_{flag}"))


def fault_table(timeline: pl.DataFrame, faults: pl.DataFrame, horizon_h: float, grace_h: float,
                flags: tuple[str, ...] = ("alert", "limit_alarm", "pca_alert")) -> pl.DataFrame:
    """Per fault: first alert of each detector inside [start - H, end + grace], lead over the limit alarm."""
    f = faults.with_row_index("fault")
    ends = timeline.group_by("batch_id").agg(pl.col("t").max().alias("batch_end"))
    for flag in flags:
        f = f.join(_first_in_window(timeline, f, flag, horizon_h, grace_h), on="fault", how="left")
    g = pl.duration(microseconds=int(grace_h * 3600e6))
    f = f.join(ends, on="batch_id", how="left")
    window_end = pl.min_horizontal(pl.col("end_ts") + g, pl.col("batch_end"))
    hours = 3600.0
    f = f.with_columns([pl.col(f"first_{flag}").is_not_null().alias(f"det_{flag}") for flag in flags])
    return f.with_columns(
        detected=pl.col("first_alert").is_not_null(),
        limit_detected=pl.col("first_limit_alarm").is_not_null(),
        lead_h=(pl.col("first_limit_alarm") - pl.col("first_alert")).dt.total_seconds() / hours,
        # the limit alarm never fired: the warning's lead runs to the end of the fault window (censored)
        lead_censored_h=(pl.coalesce(pl.col("first_limit_alarm"), window_end) - pl.col("first_alert"))
        .dt.total_seconds() / hours,
        delay_h=(pl.col("first_alert") - pl.col("start_ts")).dt.total_seconds() / hours,
    ).drop("fault")


def _detection(faults: pl.DataFrame, col: str) -> float:
    return float(faults[col].mean()) if faults.height else float("nan")


def evaluate_deviation(model: DeviationModel, pca: PCAMonitor | None, timeline: pl.DataFrame,
                       features: pl.DataFrame, faults: pl.DataFrame, horizon_h: float, grace_h: float) -> DeviationEval:
    """timeline: batch_id, t, t_h, y, excused, limit_alarm for every bucket of the held-out batches."""
    p = model.predict_proba(features)
    pca_score = pca.statistics(features)["score"].to_numpy() if pca is not None else np.zeros(len(p))
    b, t_h, ex = timeline["batch_id"].to_numpy(), timeline["t_h"].to_numpy(), timeline["excused"].to_numpy()
    tl = timeline.with_columns(p=pl.Series(p), alert=pl.Series(model.alerts(p, b, t_h)), pca_score=pl.Series(pca_score))
    days = batch_days(b, t_h)
    fa = false_alarm_rate(b, t_h, tl["alert"].to_numpy(), ex, days)
    pca_thr = threshold_for_rate(pca_score, b, t_h, ex, fa)  # PCA at the model's false-alarm rate (test-tuned)
    tl = tl.with_columns(pca_alert=pl.Series(sustained(b, t_h, pca_score >= pca_thr)),
                         pca_limit=pl.Series(sustained(b, t_h, pca_score > 1.0)))
    ft = fault_table(tl, faults, horizon_h, grace_h, ("alert", "limit_alarm", "pca_alert", "pca_limit"))
    both = ft.filter(pl.col("detected"), pl.col("limit_detected"))
    det = ft.filter(pl.col("detected"))
    y = tl["y"].to_numpy().astype(float)
    keep = ~(ex & (y == 0))
    m = {
        "dev_faults": float(ft.height), "dev_batch_days": days,
        "dev_detection_rate": _detection(ft, "detected"),
        "dev_false_alarms_per_batch_day": fa,
        "dev_threshold": float(model.threshold_),
        "dev_median_lead_h_both_alarmed": float(both["lead_h"].median()) if both.height else float("nan"),
        "dev_median_lead_h_censored": float(det["lead_censored_h"].median()) if det.height else float("nan"),
        "dev_median_delay_after_start_h": float(det["delay_h"].median()) if det.height else float("nan"),
        "dev_limit_alarm_detected_share": _detection(ft, "limit_detected"),
        "dev_limit_alarm_fa_rate": false_alarm_rate(b, t_h, tl["limit_alarm"].to_numpy(), ex, days),
        "dev_pca_detected_share_matched_fa": _detection(ft, "det_pca_alert"),
        "dev_pca_fa_rate_matched": false_alarm_rate(b, t_h, tl["pca_alert"].to_numpy(), ex, days),
        "dev_pca_detected_share_99": _detection(ft, "det_pca_limit"),
        "dev_pca_fa_rate_99": false_alarm_rate(b, t_h, tl["pca_limit"].to_numpy(), ex, days),
        "dev_brier": float(np.mean((p[keep] - y[keep]) ** 2)),
        "dev_alert_episodes": float(len(episode_starts(b, t_h, tl["alert"].to_numpy()))),
    }
    by_kind = (ft.group_by("kind").agg(
        n=pl.len(), detected=pl.col("detected").mean(), limit_detected=pl.col("limit_detected").mean(),
        pca_detected=pl.col("det_pca_alert").mean(),
        median_lead_h=pl.col("lead_h").filter(pl.col("detected") & pl.col("limit_detected")).median(),
        median_lead_censored_h=pl.col("lead_censored_h").filter(pl.col("detected")).median(),
    ).sort("kind"))
    return DeviationEval(ft, by_kind, tl, m)


def calibration_table(p: np.ndarray, y: np.ndarray, bins: int = 10) -> pl.DataFrame:
    """Reliability: mean predicted vs observed rate per probability bin (empty bins dropped)."""
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
    return (pl.DataFrame({"bin": idx, "p": p, "y": y}).group_by("bin")
            .agg(n=pl.len(), predicted=pl.col("p").mean(), observed=pl.col("y").mean()).sort("bin"))
