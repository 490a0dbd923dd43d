"""Yield model: LightGBM regression of log10 harvest viable cells from any point of a running batch.

Boosting starts from the viable cells in the vessel now (fitted VCD x mass), so the trees learn the
growth still to come rather than the level; a Huber loss keeps the rare batch lost to contamination
from dominating. The 80 % interval is split-conformal quantile regression: P10/P90 boosters fitted on the
older training batches, widened (in units of their own width) so that they cover 80 % of the newest
training batches, which they never saw. Out-of-fold scores from models fitted on less data than the
final one gave over-wide intervals (87 % coverage for a nominal 80 %).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from models.boost import load_booster, train
from models.encoding import Encoder

OFFSET_COLUMNS = ("tvc_log10_fit", "tvc_log10")
DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "huber", "alpha": 0.2, "learning_rate": 0.05, "num_leaves": 15, "min_data_in_leaf": 40,
    "feature_fraction": 0.7, "bagging_fraction": 0.8, "lambda_l2": 1.0,
}


def culture_day(t_h: np.ndarray) -> np.ndarray:
    """Culture day of an as-of time (day d covers hours [24 d - 12, 24 d + 12))."""
    return np.floor(np.asarray(t_h, dtype=float) / 24.0 + 0.5).astype(int)


class YieldModel:
    """log10 harvest viable cells with an `interval` prediction interval; sklearn estimator contract."""

    def __init__(self, params: dict[str, Any] | None = None, n_rounds: int = 400, interval: float = 0.8,
                 calibration_fraction: float = 0.25, seed: int = 7) -> None:
        self.params = params
        self.n_rounds = n_rounds
        self.interval = interval
        self.calibration_fraction = calibration_fraction
        self.seed = seed

    # ---- fitting -------------------------------------------------------------------------

    def _params(self, **over: Any) -> dict[str, Any]:
        return {**DEFAULT_PARAMS, **(self.params or {}), "seed": self.seed, **over}

    def offset(self, frame: pl.DataFrame) -> np.ndarray:
        """Where boosting starts: log10 viable cells in the vessel now, else the training median."""
        cols = [pl.col(c) for c in OFFSET_COLUMNS if c in frame.columns]
        base = frame.select(pl.coalesce(*cols, pl.lit(self.offset_default_)).fill_nan(self.offset_default_))
        return base.to_series().to_numpy().astype(float)

    def _quantile_pair(self, x: np.ndarray, y: np.ndarray, init: np.ndarray) -> tuple[Any, Any]:
        a = (1 - self.interval) / 2
        lo = train(self._params(objective="quantile", alpha=a), x, y, self.n_rounds, init)
        hi = train(self._params(objective="quantile", alpha=1 - a), x, y, self.n_rounds, init)
        return lo, hi

    def fit(self, X: pl.DataFrame, y: np.ndarray, groups: np.ndarray) -> YieldModel:  # noqa: N803 (sklearn)
        """Fit on feature rows X (with t_h), targets y (log10 cells) and batch ids (groups) in time order."""
        y = np.asarray(y, dtype=float)
        self.offset_default_ = float(np.median(y))
        self.encoder_ = Encoder().fit(X)
        x = self.encoder_.transform(X)
        init = self.offset(X)
        self.booster_ = train(self._params(), x, y, self.n_rounds, init, self.encoder_.names_)
        # split conformal: quantile boosters on the older batches, calibrated on the newest ones
        groups = np.asarray(groups)
        _, first = np.unique(groups, return_index=True)
        order = groups[np.sort(first)]
        cal = np.isin(groups, order[int(round((1 - self.calibration_fraction) * len(order))):])
        self.lo_booster_, self.hi_booster_ = self._quantile_pair(x[~cal], y[~cal], init[~cal])
        q_lo = self.lo_booster_.predict(x[cal], num_threads=1) + init[cal]
        q_hi = self.hi_booster_.predict(x[cal], num_threads=1) + init[cal]
        lo, hi = np.minimum(q_lo, q_hi), np.maximum(q_lo, q_hi)
        width = np.maximum(hi - lo, 1e-6)
        scores = np.maximum(lo - y[cal], y[cal] - hi) / width  # in units of the interval's own width
        self.corrections_ = {"all": _conformal_quantile(scores, self.interval)}
        self.n_calibration_batches_ = int(len(np.unique(groups[cal])))
        self.n_train_rows_ = len(y)
        self.n_train_batches_ = int(len(np.unique(groups)))
        return self

    # ---- prediction ----------------------------------------------------------------------

    def _matrix(self, X: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:  # noqa: N803
        return self.encoder_.transform(X), self.offset(X)

    def predict(self, X: pl.DataFrame) -> np.ndarray:  # noqa: N803
        """Median estimate of log10 harvest viable cells."""
        x, init = self._matrix(X)
        return self.booster_.predict(x, num_threads=1) + init


    def predict_interval(self, X: pl.DataFrame) -> pl.DataFrame:  # noqa: N803
        """yield_log10 (median), lo and hi of the calibrated interval, per row."""
        x, init = self._matrix(X)
        med = self.booster_.predict(x, num_threads=1) + init
        q_lo, q_hi = self.lo_booster_.predict(x, num_threads=1) + init, self.hi_booster_.predict(x, num_threads=1) + init
        lo, hi = np.minimum(q_lo, q_hi), np.maximum(q_lo, q_hi)  # sorted: crossing is not guaranteed away
        c = self.corrections_["all"] * np.maximum(hi - lo, 1e-6)
        lo, hi = np.minimum(lo - c, med), np.maximum(hi + c, med)
        return pl.DataFrame({"yield_log10": med, "lo": lo, "hi": hi})

    def contributions(self, X: pl.DataFrame) -> np.ndarray:  # noqa: N803
        """Per-row feature contributions (log10 units) of the median model; last column = bias."""
        x, _ = self._matrix(X)
        return np.asarray(self.booster_.predict(x, pred_contrib=True, num_threads=1))

    # ---- persistence ---------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        meta = {"init": {"params": self.params, "n_rounds": self.n_rounds, "interval": self.interval,
                         "calibration_fraction": self.calibration_fraction, "seed": self.seed},
                "encoder": self.encoder_.to_dict(), "corrections": self.corrections_,
                "offset_default": self.offset_default_, "n_train_rows": self.n_train_rows_,
                "n_train_batches": self.n_train_batches_, "n_calibration_batches": self.n_calibration_batches_}
        (p / "yield_model.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        for name in ("booster_", "lo_booster_", "hi_booster_"):
            (p / f"{name.rstrip('_')}.txt").write_text(getattr(self, name).model_to_string())

    @classmethod
    def load(cls, path: str | Path) -> YieldModel:
        p = Path(path)
        meta = json.loads((p / "yield_model.json").read_text())
        m = cls(**meta["init"])
        m.encoder_ = Encoder.from_dict(meta["encoder"])
        m.corrections_ = {k: float(v) for k, v in meta["corrections"].items()}
        m.offset_default_ = float(meta["offset_default"])
        m.n_train_rows_, m.n_train_batches_ = meta["n_train_rows"], meta["n_train_batches"]
        m.n_calibration_batches_ = meta["n_calibration_batches"]
        for name in ("booster_", "lo_booster_", "hi_booster_"):
            setattr(m, name, load_booster((p / f"{name.rstrip('_')}.txt").read_text()))
        return m


def _conformal_quantile(scores: np.ndarray, level: float) -> float:
    """The finite-sample conformal quantile ceil((n+1) level)/n of the scores."""
    s = np.sort(scores[np.isfinite(scores)])
    if len(s) == 0:
        return 0.0
    k = min(len(s) - 1, max(0, math.ceil((len(s) + 1) * level) - 1))
    return float(s[k])
