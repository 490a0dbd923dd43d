"""Setpoint-aware yield variant: harvest yield from the culture's state now and the setpoints held to harvest.

The yield model sees the setpoints in force, but also the process values that mirror them (TEMP follows
TEMP_SP, CO2 and base follow PH_SP), so a setpoint changed in its input moves only the part of the effect
that the trees happened to put on the setpoint column. This variant separates the state of the cells
(offline assays, volume, controller saturation, donor) from the decision: `plan_<TAG>`, the time-weighted
setpoint from t to the planned harvest. A counterfactual plan is then one column changed. A bootstrap
ensemble over batches gives the uncertainty of a *gain*, which the level interval cannot.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from models.boost import load_booster, train
from models.dataset import PlantData
from models.yield_model import DEFAULT_PARAMS, YieldModel

PLAN = "plan_"
# Online tags that describe the culture rather than the control system; every other online tag mirrors a
# setpoint or an actuator (CO2 and base follow PH_SP, perfusion flow follows PERF_SP).
STATE_ONLINE_TAGS = ("WEIGHT",)
# Offline pH follows PH_SP too; its difference to the online probe (drift) is state and stays.
_SETPOINT_MIRRORS = ("off_PH_last", "off_PH_prev", "off_PH_rate_h")


def plan_column(tag: str) -> str:
    return f"{PLAN}{tag}"


def plan_features(data: PlantData, rows: pl.DataFrame) -> pl.DataFrame:
    """rows (batch_id, t) + plan_<TAG>: each setpoint's time-weighted mean from t to the planned harvest.

    Training only: it reads the setpoint changes after t, the hindsight the recommender varies.
    """
    b = data.batches.select("batch_id", end=pl.col("start_ts") + pl.duration(
        microseconds=(pl.col("planned_h") * 3.6e9).cast(pl.Int64)))
    key = rows.select("batch_id", "t").unique().join(b, on="batch_id")
    out = rows
    for tag in data.setpoint_tags:
        sp = data.setpoints.filter(pl.col("tag") == tag).sort("batch_id", "ts")
        seg = sp.with_columns(nxt=pl.col("ts").shift(-1).over("batch_id")).select("batch_id", "ts", "nxt", "value")
        m = key.join(seg, on="batch_id")
        lo = pl.max_horizontal("ts", "t")
        hi = pl.min_horizontal(pl.coalesce("nxt", "end"), "end")
        w = pl.max_horizontal((hi - lo).dt.total_seconds(), pl.lit(0.0))
        agg = (m.with_columns(w=w).group_by("batch_id", "t")
               .agg(pl.when(pl.col("w").sum() > 0).then((pl.col("w") * pl.col("value")).sum() / pl.col("w").sum())
                    .otherwise(pl.col("value").sort_by("ts").last()).alias(plan_column(tag))))
        out = out.join(agg, on=["batch_id", "t"], how="left", maintain_order="left")
    return out


def state_columns(frame: pl.DataFrame, online_tags: tuple[str, ...]) -> list[str]:
    """Feature columns that describe the culture, not the control system (see STATE_ONLINE_TAGS)."""
    mirrors = tuple(f"{t}_" for t in online_tags if t not in STATE_ONLINE_TAGS)
    keep = []
    for c in frame.columns:
        if c.startswith(("sp_", PLAN)) or c in _SETPOINT_MIRRORS:
            continue
        if c.startswith(mirrors) and "_dev_sp_" not in c:  # PV - SP stays: it shows a saturated controller
            continue
        keep.append(c)
    return keep


def _bootstrap(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Row indices of a bootstrap sample of whole batches (with replacement)."""
    ids, inverse = np.unique(groups, return_inverse=True)
    rows_of = [np.flatnonzero(inverse == i) for i in range(len(ids))]
    pick = rng.integers(0, len(ids), len(ids))
    return np.concatenate([rows_of[i] for i in pick])


class SetpointYieldModel:
    """YieldModel on state + plan columns, plus bootstrap members for the uncertainty of a gain; sklearn contract."""

    def __init__(self, params: dict[str, Any] | None = None, n_rounds: int = 300, n_members: int = 8,
                 interval: float = 0.8, cv_folds: int = 4, seed: int = 7) -> None:
        self.params = params
        self.n_rounds = n_rounds
        self.n_members = n_members
        self.interval = interval
        self.cv_folds = cv_folds
        self.seed = seed

    def fit(self, X: pl.DataFrame, y: np.ndarray, groups: np.ndarray) -> SetpointYieldModel:  # noqa: N803
        """X: state columns + t_h + plan_* columns (rows of finished batches), y: log10 harvest cells."""
        y = np.asarray(y, dtype=float)
        groups = np.asarray(groups)
        self.core_ = YieldModel(self.params, self.n_rounds, self.interval, self.cv_folds, self.seed).fit(X, y, groups)
        self.plan_columns_ = [c for c in X.columns if c.startswith(PLAN)]
        x, init = self._matrix(X)
        rng = np.random.default_rng(self.seed)
        self.members_ = []
        for m in range(self.n_members):
            idx = _bootstrap(groups, rng)
            params = {**DEFAULT_PARAMS, **(self.params or {}), "seed": self.seed + 1 + m}
            self.members_.append(train(params, x[idx], y[idx], self.n_rounds, init[idx], self.core_.encoder_.names_))
        return self

    @property
    def inputs(self) -> list[str]:
        """Columns a frame must have."""
        return self.core_.encoder_.inputs

    def _matrix(self, X: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:  # noqa: N803
        return self.core_.encoder_.transform(X), self.core_.offset(X)

    def member_predictions(self, X: pl.DataFrame) -> np.ndarray:  # noqa: N803
        """log10 harvest cells per row (rows) and member (columns)."""
        x, init = self._matrix(X)
        return np.stack([b.predict(x) + init for b in self.members_], axis=1)

    def member_contributions(self, X: pl.DataFrame) -> np.ndarray:  # noqa: N803
        """Feature contributions (log10) averaged over the members; last column = bias."""
        x, _ = self._matrix(X)
        return np.mean([np.asarray(b.predict(x, pred_contrib=True)) for b in self.members_], axis=0)

    def predict(self, X: pl.DataFrame) -> np.ndarray:  # noqa: N803
        return self.core_.predict(X)

    def predict_interval(self, X: pl.DataFrame) -> pl.DataFrame:  # noqa: N803
        return self.core_.predict_interval(X)

    def contributions(self, X: pl.DataFrame) -> np.ndarray:  # noqa: N803
        return self.core_.contributions(X)

    @property
    def feature_names(self) -> list[str]:
        return self.core_.encoder_.names_

    def save(self, path: str | Path) -> None:
        p = Path(path)
        self.core_.save(p / "core")
        (p / "members").mkdir(parents=True, exist_ok=True)
        for i, b in enumerate(self.members_):
            (p / "members" / f"m{i:02d}.txt").write_text(b.model_to_string())
        meta = {"init": {"params": self.params, "n_rounds": self.n_rounds, "n_members": self.n_members,
                         "interval": self.interval, "cv_folds": self.cv_folds, "seed": self.seed},
                "plan_columns": self.plan_columns_}
        (p / "setpoint_model.json").write_text(json.dumps(meta, indent=1, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path) -> SetpointYieldModel:
        p = Path(path)
        meta = json.loads((p / "setpoint_model.json").read_text())
        m = cls(**meta["init"])
        m.core_ = YieldModel.load(p / "core")
        m.plan_columns_ = list(meta["plan_columns"])
        m.members_ = [load_booster(f.read_text()) for f in sorted((p / "members").glob("m*.txt"))]
        return m
