"""LightGBM plumbing shared by the models: fixed parameters, training, group folds."""

from __future__ import annotations

from typing import Any

import lightgbm as lgb
import numpy as np

# One thread (a busy 2-core box made a 2-thread fit 160x slower, libraries.md §5), deterministic, 63 bins:
# the same seed gives the same trees, and histogram building stays cheap.
BASE_PARAMS: dict[str, Any] = {
    "verbosity": -1, "num_threads": 1, "deterministic": True, "force_row_wise": True, "max_bin": 63,
    "feature_pre_filter": False, "bagging_freq": 1,
}


def train(params: dict[str, Any], x: np.ndarray, y: np.ndarray, n_rounds: int, init: np.ndarray | None = None,
          names: list[str] | None = None, weight: np.ndarray | None = None) -> lgb.Booster:
    """Fit one booster on a dense matrix (NaN = missing)."""
    ds = lgb.Dataset(x, y, init_score=init, weight=weight, feature_name=names or "auto", free_raw_data=True,
                     params={"max_bin": params.get("max_bin", 63), "feature_pre_filter": False})
    return lgb.train({**BASE_PARAMS, **params}, ds, num_boost_round=max(1, n_rounds))


def group_folds(groups: np.ndarray, k: int) -> list[np.ndarray]:
    """k folds of row indices; each group (batch) lies in exactly one, assigned in order of first appearance."""
    _, first = np.unique(groups, return_index=True)
    order = groups[np.sort(first)]
    fold_of = {g: i * k // len(order) for i, g in enumerate(order)}
    f = np.array([fold_of[g] for g in groups])
    return [np.flatnonzero(f == i) for i in range(k) if np.any(f == i)]


def load_booster(text: str) -> lgb.Booster:
    return lgb.Booster(model_str=text)
