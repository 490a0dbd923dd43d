"""Deviation model: LightGBM risk that a deviation starts within H hours on a unit, calibrated, with a threshold.

Probabilities are calibrated by isotonic regression on out-of-fold predictions over every row of the
training batches (the fit itself sees fewer quiet rows). The alert threshold is the lowest one whose
out-of-fold false alarms stay within the stated rate per batch-day.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from sklearn.isotonic import IsotonicRegression

from models.boost import group_folds, load_booster, train
from models.encoding import Encoder

DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "binary", "learning_rate": 0.05, "num_leaves": 15, "min_data_in_leaf": 40,
    "feature_fraction": 0.7, "bagging_fraction": 0.8, "lambda_l2": 1.0,
}
# Inputs a fault shows in: the online tags, setpoint deviations, the offline pH check, the metabolites.
# Donor covariates, phase means and yield projections describe the batch, not a fault; leaving them out
# halves the tuning time and keeps rare-fault trees from splitting on who the donor was.
EXCLUDE = ("cov_*", "*_phase_*", "*_mean_all", "sp_*_avg", "tvc_*", "off_*_prev", "off_ivcd", "recipe")
WARMUP_H = 1.0  # no alarms in a batch's first hour: windows of a few minutes of data say nothing yet
MERGE_GAP_H = 1.0  # alerts closer than this belong to one alarm episode
PERSIST_MIN = 20.0  # an alert is raised once the risk stayed above the threshold this long (alarm on-delay)


def _window_start(batch: np.ndarray, t_h: np.ndarray, minutes: float) -> np.ndarray:
    """Per row, the first row of the same batch at most `minutes` earlier (rows grouped by batch, by time)."""
    code = np.r_[0, np.cumsum(batch[1:] != batch[:-1])]  # a batch's rows are contiguous
    order_key = code * 1e6 + t_h  # batches never share a window: culture time stays far below 1e6 h
    if np.any(np.diff(order_key) < 0) or code[-1] + 1 != len(np.unique(batch)):
        raise ValueError("rows must be grouped by batch and sorted by time")
    return np.searchsorted(order_key, order_key - minutes / 60.0 - 1e-9, side="left")


def sustained(batch: np.ndarray, t_h: np.ndarray, on: np.ndarray, minutes: float = PERSIST_MIN,
              start: np.ndarray | None = None) -> np.ndarray:
    """on[i] and every row of the same batch in the `minutes` before it; rows grouped by batch, by time."""
    on = np.asarray(on, bool)
    if minutes <= 0 or len(on) == 0:
        return on
    j = _window_start(batch, t_h, minutes) if start is None else start
    bad = np.r_[0, np.cumsum(~on)]
    first = np.r_[True, batch[1:] != batch[:-1]]
    t0 = t_h[np.maximum.accumulate(np.where(first, np.arange(len(on)), 0))]  # each row's batch start
    long_enough = t_h - t0 >= minutes / 60.0 - 1e-9  # a batch's first rows have no history to persist over
    return ((bad[np.arange(len(on)) + 1] - bad[j]) == 0) & long_enough


def episode_starts(batch: np.ndarray, t_h: np.ndarray, on: np.ndarray, gap_h: float = MERGE_GAP_H) -> np.ndarray:
    """Row indices where an alarm episode starts; rows sorted by (batch, time); gaps < gap_h are bridged."""
    idx = np.flatnonzero(on)
    if len(idx) == 0:
        return idx
    new_batch = np.r_[True, batch[idx][1:] != batch[idx][:-1]]
    long_gap = np.r_[True, np.diff(t_h[idx]) >= gap_h]
    return idx[new_batch | long_gap]


def false_alarm_rate(batch: np.ndarray, t_h: np.ndarray, on: np.ndarray, excused: np.ndarray,
                     batch_days: float) -> float:
    """Alarm episodes starting on a row that is not excused (inside a deviation window), per batch-day."""
    starts = episode_starts(batch, t_h, on)
    return float(np.sum(~excused[starts]) / max(batch_days, 1e-9))


def batch_days(batch: np.ndarray, t_h: np.ndarray) -> float:
    """Observed batch-days: per batch, the span of its rows."""
    df = pl.DataFrame({"b": batch, "t": t_h}).group_by("b").agg(span=pl.col("t").max() - pl.col("t").min())
    return float(df.sort("b")["span"].sum() / 24.0)  # group order varies; a fixed order keeps the float sum exact


def threshold_for_rate(p: np.ndarray, batch: np.ndarray, t_h: np.ndarray, excused: np.ndarray,
                       target: float, persist_min: float = PERSIST_MIN) -> float:
    """Lowest threshold whose false-alarm rate is within target (scanning the predicted values)."""
    days = batch_days(batch, t_h)
    start = _window_start(batch, t_h, persist_min) if len(p) else None
    cands = np.unique(np.quantile(p, np.linspace(0.5, 1.0, 201))) if len(p) else np.array([])
    for thr in cands:
        on = sustained(batch, t_h, p >= thr, persist_min, start)
        if false_alarm_rate(batch, t_h, on, excused, days) <= target:
            return float(thr)
    return float(np.nextafter(p.max(), np.inf))


class DeviationModel:
    """Calibrated probability that a deviation starts within H hours (or is under way); sklearn contract."""

    def __init__(self, params: dict[str, Any] | None = None, n_rounds: int = 300, cv_folds: int = 3,
                 target_false_alarms: float = 0.1, seed: int = 7) -> None:
        self.params = params
        self.n_rounds = n_rounds
        self.cv_folds = cv_folds
        self.target_false_alarms = target_false_alarms
        self.seed = seed

    def _params(self) -> dict[str, Any]:
        return {**DEFAULT_PARAMS, **(self.params or {}), "seed": self.seed}

    def fit(self, X: pl.DataFrame, y: np.ndarray, groups: np.ndarray, excused: np.ndarray,  # noqa: N803
            fit_mask: np.ndarray | None = None, weight: np.ndarray | None = None) -> DeviationModel:
        """X: every row of the training batches (sorted by batch, time), y: 0/1, excused: y or just after a fault.

        fit_mask: rows the booster learns from (default all), with weights; calibration and threshold use all rows.
        """
        y = np.asarray(y, dtype=float)
        groups = np.asarray(groups)
        t_h = X["t_h"].to_numpy()
        warm = t_h >= WARMUP_H
        fit_mask = warm & (np.ones(len(y), bool) if fit_mask is None else np.asarray(fit_mask, bool))
        self.encoder_ = Encoder(EXCLUDE).fit(X)
        x = self.encoder_.transform(X)
        w = np.ones(len(y)) if weight is None else np.asarray(weight, float)
        rows = np.flatnonzero(fit_mask)
        self.booster_ = train(self._params(), x[rows], y[rows], self.n_rounds, names=self.encoder_.names_,
                              weight=w[rows])
        oof = np.full(len(y), np.nan)
        for idx in group_folds(groups, self.cv_folds):
            rest = np.setdiff1d(rows, idx)
            oof[idx] = train(self._params(), x[rest], y[rest], self.n_rounds, weight=w[rest]).predict(x[idx], num_threads=1)
        excused = np.asarray(excused, bool)
        cal = warm & ~(excused & (y == 0))  # rows just after a fault are neither normal nor faulty
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(oof[cal], y[cal])
        self.calibration_ = (iso.X_thresholds_.tolist(), iso.y_thresholds_.tolist())
        p = np.where(warm, self._calibrate(np.nan_to_num(oof)), 0.0)
        self.threshold_ = threshold_for_rate(p, groups, t_h, excused, self.target_false_alarms)
        self.oof_ = p
        return self

    def _calibrate(self, raw: np.ndarray) -> np.ndarray:
        xs, ys = self.calibration_
        return np.interp(raw, xs, ys)

    def predict_proba(self, X: pl.DataFrame) -> np.ndarray:  # noqa: N803
        """Calibrated risk per row."""
        return self._calibrate(self.booster_.predict(self.encoder_.transform(X), num_threads=1))

    def alerts(self, p: np.ndarray, batch: np.ndarray, t_h: np.ndarray) -> np.ndarray:
        """Alerts of a timeline (rows sorted by batch, time): risk above threshold for PERSIST_MIN."""
        return sustained(batch, t_h, (np.asarray(p) >= self.threshold_) & (np.asarray(t_h) >= WARMUP_H))

    def contributions(self, X: pl.DataFrame) -> np.ndarray:  # noqa: N803
        """Per-row contributions to the raw (log-odds) score; last column = bias."""
        return np.asarray(self.booster_.predict(self.encoder_.transform(X), pred_contrib=True, num_threads=1))

    def save(self, path: str | Path) -> None:
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        meta = {"init": {"params": self.params, "n_rounds": self.n_rounds, "cv_folds": self.cv_folds,
                         "target_false_alarms": self.target_false_alarms, "seed": self.seed},
                "encoder": self.encoder_.to_dict(), "calibration": self.calibration_, "threshold": self.threshold_}
        (p / "deviation_model.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        (p / "booster.txt").write_text(self.booster_.model_to_string())

    @classmethod
    def load(cls, path: str | Path) -> DeviationModel:
        p = Path(path)
        meta = json.loads((p / "deviation_model.json").read_text())
        m = cls(**meta["init"])
        m.encoder_ = Encoder.from_dict(meta["encoder"])
        m.calibration_ = tuple(meta["calibration"])
        m.threshold_ = float(meta["threshold"])
        m.booster_ = load_booster((p / "booster.txt").read_text())
        return m
