"""The panel's small functions without Streamlit: limits, phases, drift, arguments, chart specs, model adapter."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import jsonschema
import numpy as np
import polars as pl
import pytest
from altair.vegalite.v6.schema.core import load_schema

from dashboards import charts, predictions
from dashboards import queries as q
from dashboards.context import PanelArgs, PanelConfigError, open_plant, panel_args
from dashboards.model_registry import psi
from plant.site import load_demo_site

UTC = timezone.utc
SITE = load_demo_site()
T0 = datetime(2025, 3, 3, 8, 0, tzinfo=UTC)


def test_limit_status_and_worst():
    temp = SITE.tags["BR01.TEMP"]  # alert 36-38.3, action 35-39
    assert [q.limit_status(temp, v) for v in (37.0, 38.5, 39.5, 35.5, 34.0, None)] == \
        ["ok", "alert", "action", "alert", "action", "no data"]
    assert q.worst(["ok", "stale", "alert"]) == "alert" and q.worst([]) == "ok"


def test_phase_follows_the_recipe_schedule():
    recipe = SITE.recipes["CART-RB-12D"]  # transduction day 1, feed day 3, harvest day 12
    assert [q.phase_of(recipe, d) for d in (0.5, 1.5, 5.0, 11.95)] == \
        ["activation", "transduction", "expansion", "harvest"]
    assert q.phase_of(None, 2.0) == "running" and q.phase_of(recipe, None) == "idle"


def test_particle_limits_come_from_the_annex1_grade():
    assert q.particle_limits("A", "5.0") == (29, 29)
    assert q.particle_limits("B", "0.5") == (3520, 352_000)
    assert q.particle_limits("D", "0.5") == (3_520_000, None)
    rules = q.particle_limit_rules("D", "0.5")
    assert rules["label"].to_list() == ["grade D at rest"]  # no predetermined in-operation limit


def test_psi_is_small_for_the_same_distribution_and_large_for_a_shift():
    rng = np.random.default_rng(1)
    ref = rng.normal(37, 0.1, 5000)
    assert psi(ref, rng.normal(37, 0.1, 500)) < 0.1
    assert psi(ref, rng.normal(37.3, 0.1, 500)) > 0.25
    assert psi(ref[:5], ref) is None  # too little reference data to judge


def test_panel_arguments_from_argv_then_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("CELLWATCH_DATA", raising=False)
    with pytest.raises(PanelConfigError, match="cellwatch panel --data DIR"):
        panel_args([])
    args = panel_args(["--data", str(tmp_path), "--history=/h", "--mlflow", "/m/mlflow.db"])
    assert args == PanelArgs(tmp_path, Path("/h"), Path("/m/mlflow.db"))
    assert PanelArgs.parse(args.key()) == PanelArgs(tmp_path.resolve(), Path("/h"), Path("/m/mlflow.db"))
    monkeypatch.setenv("CELLWATCH_DATA", str(tmp_path))
    assert panel_args([]).data == tmp_path
    with pytest.raises(PanelConfigError, match="no records.db here"):
        open_plant(tmp_path)


def test_cli_refuses_a_folder_without_records(tmp_path):
    done = subprocess.run([sys.executable, "-m", "cellwatch.cli", "panel", "--data", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "no records.db here" in done.stderr and "Traceback" not in done.stderr


# ------------------------------------------------------------------------------------------ chart specs

VEGA_LITE = jsonschema.validators.validator_for(load_schema())(load_schema())  # built once: the schema is large


def _valid(spec: dict) -> None:
    """Valid Vega-Lite (the schema Altair ships) and valid JSON (no NaN)."""
    json.dumps(spec, allow_nan=False)
    VEGA_LITE.validate(spec)


def _series(n: int = 50) -> pl.DataFrame:
    return pl.DataFrame({"ts": [T0 + timedelta(minutes=10 * i) for i in range(n)],
                         "value": [37.0 + 0.01 * i if i != 7 else float("nan") for i in range(n)]})


def test_every_chart_is_a_valid_vega_lite_spec():
    temp, sp = SITE.tags["BR01.TEMP"], SITE.tags["BR01.TEMP_SP"]
    series = _series()
    _valid(charts.trend_chart(series, temp, series.head(3), sp))
    _valid(charts.trend_chart(series, SITE.tags["BR01.WEIGHT"]))  # no limits, no setpoint
    _valid(charts.stack([charts.trend_chart(series, temp), charts.trend_chart(series, SITE.tags["BR01.PH"])]))
    grid = pl.DataFrame({"owner": ["BR01", "BR02"], "tag": ["TEMP", "TEMP"], "status": ["ok", "action"],
                         "value": ["37", "39.5"]})
    _valid(charts.status_grid(grid, "units", {"ok": "#0a0", "action": "#a00"}))
    traj = series.select("ts", low=pl.col("value") - 1, mid="value", high=pl.col("value") + 1)
    _valid(charts.interval_chart(traj, "yield", "cells"))
    _valid(charts.risk_chart(series.select("ts", risk=pl.lit(0.2)), 0.7))
    _valid(charts.drivers_chart(pl.DataFrame({"feature": ["a", "b"], "contribution": [0.1, -0.2]})))
    _valid(charts.offline_chart(series.with_columns(analyte=pl.lit("VCD"), unit=pl.lit("1e6/mL"))))
    _valid(charts.particles_chart(series, q.particle_limit_rules("B", "0.5"), ">= 0.5 um"))
    rooms = pl.DataFrame({"room": ["CR-A1", "CR-D1"], "grade": ["A", "D"], "dp": [44.0, None],
                          "setpoint": [45.0, 15.0], "alert": [40.0, 10.0], "action": [35.0, 5.0]})
    _valid(charts.cascade_chart(rooms))
    _valid(charts.load_chart(series.select("ts", alarms=pl.lit(2))))
    table = pl.DataFrame({"unit kind": ["rocking_bag"], "input": ["TEMP"], "PSI": [0.3], "verdict": ["drifted"]})
    _valid(charts.psi_chart(table, ["rocking_bag"]))


def test_live_grids_send_their_cells_as_named_datasets():
    """The overview's grids keep one spec while their values change (the browser swaps data, no re-embed)."""
    def grid(value: str) -> dict:
        cells = pl.DataFrame({"owner": ["BR01"], "tag": ["TEMP"], "status": ["ok"], "value": [value]})
        return charts.stack([charts.status_grid(cells, "units", {"ok": "#0a0"}, "units"),
                             charts.status_grid(cells, "rooms", {"ok": "#0a0"}, "rooms")])
    a, b = grid("37"), grid("37.1")
    _valid(a)
    assert set(a["datasets"]) == {"units", "rooms"} and a["datasets"] != b["datasets"]
    assert {k: v for k, v in a.items() if k != "datasets"} == {k: v for k, v in b.items() if k != "datasets"}


def test_values_are_json_safe():
    rows = charts.values(_series(10))
    assert rows[0]["ts"] == "2025-03-03T08:00:00Z" and rows[7]["value"] is None


# ------------------------------------------------------------------------------------------ model adapter

@dataclass
class _Driver:
    feature: str
    contribution: float


@dataclass
class _Yield:
    lo: float
    yield_log10: float
    hi: float
    model_version: str = "3"
    applicability: object = None
    drivers: tuple = (_Driver("temp_mean_24h", 0.05),)

    @property
    def cells(self) -> tuple[float, float, float]:
        return 10 ** self.yield_log10, 10 ** self.lo, 10 ** self.hi


@dataclass
class _Risk:
    risk: float
    drivers: tuple = (_Driver("ph_mean_1h", 0.4),)


@dataclass
class _Prediction:
    yield_forecast: _Yield
    deviation: _Risk


class _FakeBatchPredictor:
    """Stands in for models.predict.BatchPredictor (the same attributes and predict signature)."""

    versions = {"yield": "3", "deviation": "2"}
    deviation_model = type("D", (), {"threshold_": 0.6})()

    def __init__(self) -> None:
        self.calls: list[datetime] = []

    def predict(self, hist, records, batch_id, at):  # noqa: ANN001, ANN202
        self.calls.append(at)
        return _Prediction(_Yield(9.0, 9.5, 9.9), _Risk(0.1 + 0.01 * len(self.calls)))


def test_champion_predictor_adapts_the_models_package(panel_plant, panel_scenario):
    unit = min(panel_scenario.running)
    batch = panel_scenario.running[unit]
    fake = _FakeBatchPredictor()
    model = predictions.ChampionPredictor(panel_plant, fake)
    assert model.version == "yield v3, deviation v2" and model.threshold == 0.6
    h = model.harvest(batch, panel_scenario.now)
    assert isinstance(h, predictions.Harvest) and h.low < h.mid < h.high and round(np.log10(h.mid), 6) == 9.5
    traj = model.yield_trajectory(batch, panel_scenario.now)
    assert traj.height == len(fake.calls) - 1 and traj["ts"].max() == panel_scenario.now  # day 1 .. now
    assert model.risk(batch, panel_scenario.now)["risk"].is_sorted()
    assert model.drivers(batch, panel_scenario.now)["feature"].to_list() == ["yield: temp_mean_24h",
                                                                             "risk: ph_mean_1h"]
    assert isinstance(model.harvest("COI-DEMO-0000-0000-0", panel_scenario.now), predictions.Unavailable)


def test_no_store_means_no_model_and_nothing_is_created(panel_plant, tmp_path):
    plant = replace(panel_plant, mlflow_db=tmp_path / "mlflow.db")
    assert predictions.load(plant) is predictions.NO_MODEL
    assert not plant.mlflow_db.exists()


def test_overview_forecasts_are_computed_off_the_tick_and_follow_the_data_bucket(monkeypatch, panel_plant,
                                                                                 panel_scenario):
    from dashboards import views

    fake = _FakeBatchPredictor()
    model = predictions.ChampionPredictor(panel_plant, fake)
    monkeypatch.setattr(views, "predictor", lambda data: model)
    board = views.ForecastBoard("key")
    ids = sorted(panel_scenario.running.values())
    at = views.model_time(panel_scenario.now)
    first = board.get(ids, at)
    assert all(first[b] is views.PENDING for b in ids)  # the tick does not wait for the model
    assert board.wait(30)
    got = board.get(ids, at)
    assert all(isinstance(got[b], predictions.Harvest) for b in ids)
    n = len(fake.calls)
    assert board.get(ids, at) == got and len(fake.calls) == n  # the same bucket: nothing recomputed
    later = board.get(ids, at + timedelta(minutes=10))
    assert later == got  # a new bucket: the last forecasts stay shown while the new ones are computed
    assert board.wait(30) and len(fake.calls) > n
    assert set(board.get(ids[:1], at + timedelta(minutes=10))) == {ids[0]}
    assert board.wait(30) and set(board.values) == {ids[0]}  # only the batches last asked for are kept
