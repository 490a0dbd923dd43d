"""Optuna tuning of the LightGBM models: seeded TPE, median pruning, in-memory or any RDB storage.

Validation is the newest part of the training batches (a time split inside the training split).
With a database URL (sqlite:///optuna.db, postgresql://...) several workers can run trials of one
study: `cellwatch tune --storage URL --study NAME` on each, then `cellwatch train --storage URL
--study NAME --trials 0` trains with the best parameters found so far.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np

from models.boost import BASE_PARAMS

MAX_ROUNDS = {"yield": 300, "deviation": 150}
METRIC = {"yield": "l2", "deviation": "binary_logloss"}


@dataclass(frozen=True, slots=True)
class TuneResult:
    """Best parameters and boosting rounds of a study."""

    params: dict[str, Any]
    n_rounds: int
    best_value: float
    n_complete: int
    n_pruned: int
    study_name: str


@dataclass(frozen=True)
class TuneData:
    """Fit and validation matrices (and start scores) of one model."""

    x_fit: np.ndarray
    y_fit: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    init_fit: np.ndarray | None = None
    init_val: np.ndarray | None = None
    w_fit: np.ndarray | None = None
    w_val: np.ndarray | None = None


def _space(kind: str, trial: Any) -> dict[str, Any]:
    p = {
        "learning_rate": trial.suggest_float("learning_rate", 0.05, 0.3, log=True),
        "num_leaves": trial.suggest_int("num_leaves", 4, 40, log=True),
        "min_data_in_leaf": trial.suggest_int("min_data_in_leaf", 15, 200, log=True),
        "feature_fraction": trial.suggest_float("feature_fraction", 0.3, 1.0),
        "bagging_fraction": trial.suggest_float("bagging_fraction", 0.5, 1.0),
        "lambda_l2": trial.suggest_float("lambda_l2", 1e-3, 30.0, log=True),
    }
    if kind == "yield":
        p |= {"objective": "huber", "alpha": trial.suggest_float("alpha", 0.05, 1.0, log=True)}
    else:
        p |= {"objective": "binary", "scale_pos_weight": trial.suggest_float("scale_pos_weight", 1.0, 10.0, log=True)}
    return p


def _fixed(kind: str) -> dict[str, Any]:
    return {"objective": "huber" if kind == "yield" else "binary"}


def tune(kind: str, data: TuneData, n_trials: int, seed: int, storage: str | None = None,
         study_name: str | None = None) -> TuneResult:
    """Run n_trials more trials of the study and return its best trial (n_trials=0: reuse the study)."""
    import optuna
    from optuna_integration.lightgbm import LightGBMPruningCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = study_name or f"cellwatch-{kind}"
    study = optuna.create_study(
        study_name=name, storage=storage, load_if_exists=True, direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=20, interval_steps=10),
    )
    dfit = lgb.Dataset(data.x_fit, data.y_fit, init_score=data.init_fit, weight=data.w_fit, free_raw_data=False,
                       params={"max_bin": BASE_PARAMS["max_bin"], "feature_pre_filter": False})
    dval = lgb.Dataset(data.x_val, data.y_val, init_score=data.init_val, weight=data.w_val, reference=dfit)
    metric = METRIC[kind]

    def objective(trial: optuna.Trial) -> float:
        params = {**BASE_PARAMS, **_space(kind, trial), "metric": metric, "seed": seed}
        booster = lgb.train(params, dfit, MAX_ROUNDS[kind], valid_sets=[dval], valid_names=["valid"],
                            callbacks=[LightGBMPruningCallback(trial, metric, valid_name="valid", report_interval=10),
                                       lgb.early_stopping(20, verbose=False)])
        trial.set_user_attr("n_rounds", int(booster.best_iteration or MAX_ROUNDS[kind]))
        return float(booster.best_score["valid"][metric])

    if n_trials > 0:
        study.optimize(objective, n_trials=n_trials)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise ValueError(f"study {name!r} has no completed trial; run some trials first (n_trials > 0)")
    best = study.best_trial
    params = {**_fixed(kind), **best.params}
    if kind == "yield":
        params["objective"] = "huber"
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    return TuneResult(params, int(best.user_attrs["n_rounds"]), float(best.value), len(done), pruned, name)
