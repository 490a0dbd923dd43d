"""Training run, MLflow tracking and registry, inference by alias, and the promotion gate (real sqlite store)."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import polars as pl
import pytest

from models.config import load_config
from models.dataset import load_plant_data
from models.gate import GateRefused, promote
from models.predict import BatchPredictor, with_setpoints
from models.registry import DEVIATION_MODEL, YIELD_MODEL, client, load_models, log_model, resolve, setup
from models.training import holdout_yield_rows, split_batches
from models.yield_model import YieldModel
from plant.historian import Historian
from plant.model_records import promotions
from plant.records import Records
from plant.site import load_demo_site

SITE = load_demo_site()


def test_training_run_logs_everything_and_registers_challengers(trained):
    result, tracking = trained
    assert result.versions == {"yield": "1", "deviation": "1"}
    mc = client(tracking)
    run = mc.get_run(result.run_id)
    assert run.data.params["seed"] == "7" and run.data.params["n_trials"] == "2"
    assert len(run.data.tags["cellwatch.data_fingerprint"]) == 64
    assert run.data.tags["cellwatch.code_version"]
    assert {"yield_rmse_day5", "dev_detection_rate", "dev_false_alarms_per_batch_day"} <= set(run.data.metrics)
    top = {a.path for a in mc.list_artifacts(result.run_id)}
    assert {"report.html", "split.json", "plots"} <= top
    plots = {a.path for a in mc.list_artifacts(result.run_id, "plots")}
    assert "plots/yield_rmse_by_day.png" in plots and "plots/deviation_timelines.png" in plots
    for name in (YIELD_MODEL, DEVIATION_MODEL):
        mv = mc.get_model_version(name, "1")
        assert "challenger" in mc.get_registered_model(name).aliases
        assert "## Intended use" in mv.description and "## Limitations" in mv.description
        assert mv.tags["cellwatch.data_fingerprint"] == result.fingerprint
        child = mc.get_run(mv.run_id)
        assert any(a.path == "model_card.md" for a in mc.list_artifacts(mv.run_id))
        assert child.data.params["n_rounds"]
        mlflow = setup(tracking)
        info = mlflow.models.get_model_info(f"models:/{name}/1")
        assert info.signature is not None and info.saved_input_example_info is not None


def test_models_loaded_by_alias_predict_what_was_evaluated(trained, model_history):
    result, tracking = trained
    models = load_models(tracking, "challenger")
    with Records.open(model_history / "records.db") as rec:
        data = load_plant_data(Historian(model_history / "historian"), rec, SITE)
        split = split_batches(data, rec, load_config())
    rows = holdout_yield_rows(data, split)
    got = models.yield_model.predict_interval(rows)
    want = result.yield_eval.predictions
    assert np.allclose(got["yield_log10"].to_numpy(), want["pred"].to_numpy())
    assert np.allclose(got["hi"].to_numpy(), want["hi"].to_numpy())
    assert (got["lo"] <= got["yield_log10"]).all() and (got["yield_log10"] <= got["hi"]).all()


def test_predict_a_running_batch_with_drivers_and_applicability(trained, model_history):
    _, tracking = trained
    predictor = BatchPredictor.from_registry(tracking, SITE, "challenger")
    with Records.open(model_history / "records.db") as rec:
        b = rec.batches().row(-1, named=True)
        p = predictor.predict(Historian(model_history / "historian"), rec, b["batch_id"],
                              b["start_ts"] + timedelta(days=4, minutes=17))
        assert p.yield_forecast.lo <= p.yield_forecast.yield_log10 <= p.yield_forecast.hi
        assert abs(p.yield_forecast.culture_h - 96.3) < 0.2 and len(p.yield_forecast.drivers) == 5
        assert 0.0 <= p.deviation.risk <= 1.0 and len(p.deviation.drivers) == 5
        # a setpoint far outside anything trained on: the prediction says it is not to be trusted, and why
        what_if = predictor.predict_row(with_setpoints(p.features, {"TEMP_SP": 39.5}, {"TEMP_SP": "TEMP"}))
        assert not what_if.yield_forecast.applicability.trustworthy
        assert any("sp_TEMP_SP" in r for r in what_if.yield_forecast.applicability.reasons)
        # stale inputs: no good DO value for two hours
        stale = predictor.predict_row(p.features.with_columns(DO_age_min=pl.lit(120.0)))
        assert any(r.startswith("stale input: DO") for r in stale.yield_forecast.applicability.reasons)


def test_gate_promotes_then_refuses_a_worse_challenger(trained, model_history, lenient_config):
    result, tracking = trained
    cfg = load_config(lenient_config)
    first = promote(model_history, SITE, cfg, tracking, "yield", "Sam Scientist", "first champion")
    assert first.promoted and resolve(tracking, "yield", "champion") == "1"
    assert resolve(tracking, "yield", "challenger") is None
    # a deliberately weak challenger: one boosting round of two leaves
    with Records.open(model_history / "records.db") as rec:
        data = load_plant_data(Historian(model_history / "historian"), rec, SITE)
        split = split_batches(data, rec, cfg)
    from models.training import prepare

    rows = prepare(data, split, cfg).yield_train
    weak = YieldModel({"num_leaves": 2, "learning_rate": 0.01}, n_rounds=1).fit(
        rows, rows["log10_tvc"].to_numpy(), rows["batch_id"].to_numpy())
    mlflow = setup(tracking)
    with mlflow.start_run(run_name="weak"):
        v2 = log_model(mlflow, "yield", weak, None, rows.head(5), {"cellwatch.holdout": "default"}, "weak model")
    assert v2 == "2" and resolve(tracking, "yield", "challenger") == "2"
    with pytest.raises(GateRefused, match="does not beat the champion"):
        promote(model_history, SITE, cfg, tracking, "yield", "Sam Scientist", "try the weak one")
    assert resolve(tracking, "yield", "champion") == "1"
    strict = load_config(lenient_config)
    from dataclasses import replace

    strict = replace(strict, deviation_acceptance=replace(strict.deviation_acceptance, min_detection_rate=1.01))
    with pytest.raises(GateRefused, match="fails acceptance"):
        promote(model_history, SITE, strict, tracking, "deviation", "Sam Scientist", "strict criteria")
    with Records.open(model_history / "records.db") as rec:
        log = promotions(rec)
    assert log["outcome"].to_list() == ["promoted", "refused", "refused"]
    assert log["decided_by"].unique().to_list() == ["Sam Scientist"]
    assert "does not beat" in json.loads(log["details"][1])["refusal_reasons"][0]
    with pytest.raises(ValueError, match="--reason"):
        promote(model_history, SITE, cfg, tracking, "deviation", "Sam Scientist", " ")
