"""Model components: determinism, persistence, Optuna storage, baselines, alarms logic, config errors."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from models.baselines import PCAMonitor, PLSYield
from models.config import ConfigError, ModelConfig, load_config
from models.dataset import load_plant_data
from models.deviation import DeviationModel, episode_starts, false_alarm_rate, sustained, threshold_for_rate
from models.training import _tune_yield, prepare, split_batches
from models.yield_model import YieldModel
from plant.historian import Historian
from plant.records import Records
from plant.site import load_demo_site

CFG = ModelConfig()
PARAMS = {"learning_rate": 0.1, "num_leaves": 8, "min_data_in_leaf": 20}


@pytest.fixture(scope="module")
def prepared(model_history, trained):  # after `trained`: the hold-out is locked by then
    with Records.open(model_history / "records.db") as rec:
        data = load_plant_data(Historian(model_history / "historian"), rec, load_demo_site())
        return prepare(data, split_batches(data, rec, CFG), CFG)


def _fit_both(p):
    f, w = p.yield_train, p.warn_train
    ym = YieldModel(PARAMS, 60, seed=3).fit(f, f["log10_tvc"].to_numpy(), f["batch_id"].to_numpy())
    dm = DeviationModel(PARAMS, 40, seed=3).fit(w, w["y"].to_numpy(), w["batch_id"].to_numpy(),
                                                (w["y"] == 1).to_numpy() | w["ignore"].to_numpy(),
                                                w["fit"].to_numpy(), w["weight"].to_numpy())
    return ym, dm


def test_same_seed_same_models_and_same_tuning(prepared):
    (y1, d1), (y2, d2) = _fit_both(prepared), _fit_both(prepared)
    rows = prepared.yield_test
    assert y1.predict_interval(rows).equals(y2.predict_interval(rows))
    assert np.array_equal(d1.predict_proba(prepared.warn_train), d2.predict_proba(prepared.warn_train))
    assert d1.threshold_ == d2.threshold_
    t1, t2 = _tune_yield(prepared, CFG, 3, None, None), _tune_yield(prepared, CFG, 3, None, None)
    assert t1.params == t2.params and t1.n_rounds == t2.n_rounds and t1.best_value == t2.best_value


def test_saved_models_predict_exactly_as_fitted(prepared, tmp_path):
    ym, dm = _fit_both(prepared)
    ym.save(tmp_path / "y")
    dm.save(tmp_path / "d")
    rows = prepared.yield_test
    assert YieldModel.load(tmp_path / "y").predict_interval(rows).equals(ym.predict_interval(rows))
    assert np.array_equal(DeviationModel.load(tmp_path / "d").predict_proba(rows), dm.predict_proba(rows))
    assert np.allclose(ym.contributions(rows).sum(axis=1) + ym.offset(rows), ym.predict(rows))


def test_optuna_study_shared_through_a_database(prepared, tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    a = _tune_yield(prepared, CFG, 2, url, "shared")
    b = _tune_yield(prepared, CFG, 2, url, "shared")  # a second worker continues the same study
    assert b.n_complete + b.n_pruned == 4 and b.best_value <= a.best_value
    again = _tune_yield(prepared, CFG, 0, url, "shared")  # no new trials: the best so far
    assert again.params == b.params


def test_baselines_fit_and_score(prepared):
    f = prepared.yield_train
    pls = PLSYield().fit(f, f["log10_tvc"].to_numpy(), f["batch_id"].to_numpy())
    assert set(pls.components_) >= {3, 5} and np.isfinite(pls.predict(prepared.yield_test)).all()
    normal = prepared.warn_train.filter(pl.col("y") == 0, ~pl.col("ignore"))
    stats = PCAMonitor().fit(normal).statistics(normal)
    assert 0.005 < float((stats["score"] > 1).mean()) < 0.1  # ~1-2 % of normal rows beyond the 99 % limits


def test_alarm_episodes_persistence_and_threshold():
    batch = np.array(["a"] * 8 + ["b"] * 4)
    t_h = np.r_[np.arange(8) / 6, np.arange(4) / 6]  # 10-minute rows
    on = np.array([1, 1, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1], bool)
    assert sustained(batch, t_h, on, 20.0).tolist() == [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1]
    assert episode_starts(batch, t_h, on, gap_h=1.0).tolist() == [0, 8]  # the 10-min gap is bridged
    excused = np.zeros(12, bool)
    excused[8:] = True
    assert false_alarm_rate(batch, t_h, on, excused, 1.0) == 1.0  # only batch a's episode is false
    p = np.linspace(0, 1, 12)
    thr = threshold_for_rate(p, batch, t_h, excused, 0.0, 0.0)
    assert not np.any(sustained(batch, t_h, p >= thr, 0.0) & ~excused)
    with pytest.raises(ValueError, match="grouped by batch"):
        sustained(np.array(["a", "b", "a"]), np.array([0.0, 0.0, 1.0]), np.ones(3, bool))


def test_config_errors_name_file_key_and_value(tmp_path):
    bad = tmp_path / "m.toml"
    bad.write_text("[yield_acceptance]\nmax_rmse_log10_day6 = 0.2\n")
    with pytest.raises(ConfigError, match=r"m.toml: yield_acceptance.max_rmse_log10_day6: unknown key"):
        load_config(bad)
    bad.write_text("n_trials = 'thirty'\n")
    with pytest.raises(ConfigError, match=r"m.toml: n_trials: expected a number \(value: 'thirty'\)"):
        load_config(bad)
    bad.write_text("bucket_min = 7\n")
    with pytest.raises(ConfigError, match="bucket_min: must divide 60"):
        load_config(bad)
