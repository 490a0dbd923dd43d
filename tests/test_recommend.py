"""Setpoint recommender: limits (PAR, maximum step, minimum interval), no-advice guards with their reasons, the
records it produces, training from plant data, and a short closed-loop run on paired twin batches."""

from __future__ import annotations

import copy
import dataclasses
import re
from datetime import timedelta

import numpy as np
import polars as pl
import pytest

from cellwatch.validate import recipe_plan
from models.domain import Applicability
from models.recommend import (
    Advice,
    NoAdvice,
    NoAdviceReason,
    Recommender,
    RecommenderModels,
    within_limits,
)
from models.recommend_state import load_state
from models.recommend_train import TrainConfig, load_models, save_models, train_recommender
from plant.historian import Historian
from plant.recommendations import Recommendation, RecommendationStore
from plant.records import Records, SetpointChange
from plant.sim.history import generate_history, run_bank, schedule
from plant.site import load_demo_site
from tests.recommend_helpers import copy_unit_history, synthetic_effect

SITE = load_demo_site()
UP = lambda kind, tag: 0.05


@pytest.fixture(scope="module")
def plant(tmp_path_factory):
    """A 32-batch history and recommender models trained on it (the real domain and risk models)."""
    root = tmp_path_factory.mktemp("rec") / "history"
    generate_history(SITE, root, 32, seed=3, workers=1)
    records = Records.open(root / "records.db")
    hist = Historian(root / "historian")
    trained, stats = train_recommender(hist, records, SITE, TrainConfig(telemetry_batches=32, risk_step_min=240,
                                                                        risk_rounds=40, n_boot=40))
    yield root, hist, records, trained, stats
    records.close()


@pytest.fixture(scope="module")
def models(plant):
    """The trained domain and risk models with a response surface of known effects. Thirty-two batches saw few
    setpoint values, so the domain's setpoint ranges are widened: these tests are about the site's limits."""
    *_, trained, _ = plant
    domain = copy.copy(trained.domain)
    domain.ranges_ = {k: ((-np.inf, np.inf) if k.startswith("sp_") else v) for k, v in trained.domain.ranges_.items()}
    return RecommenderModels(synthetic_effect(SITE, UP), domain, trained.deviation, "test-models-1")


def _batch(records: Records, i: int) -> dict:
    """One of BR01's newest batches: the domain model learnt from the newest ones, so these lie inside it."""
    return records.batches(status="harvested").filter(pl.col("unit") == "BR01").row(-1 - i, named=True)


def _state(plant, i: int = 0, hours: float = 100.0, hist: Historian | None = None, store=None):
    _, h, records, *_ = plant
    b = _batch(records, i)
    return load_state(hist or h, records, SITE, b["batch_id"], b["start_ts"] + timedelta(hours=hours), store)


def test_training_reads_plant_data_and_saves_a_versioned_bundle(plant, tmp_path):
    *_, trained, stats = plant
    assert stats["n_batches"] == 32 and stats["n_telemetry_batches"] == 32
    assert re.fullmatch(r"recommender-[0-9a-f]{12}", trained.version)
    back = load_models(save_models(trained, tmp_path / "m"))
    assert back.version == trained.version and np.array_equal(back.effect.draws_, trained.effect.draws_)


def test_advice_carries_interval_drivers_version_and_input_hash(plant, models):
    state = _state(plant)
    advice = Recommender(SITE, models).recommend(state)
    assert isinstance(advice, Advice) and 1 <= len(advice.recommendations) <= 3
    for rec in advice.recommendations:
        tag = SITE.tags[f"{rec.unit}.{rec.tag}"]
        assert rec.proposed > rec.current and within_limits(tag, rec.current, rec.proposed)
        assert rec.gain_low <= rec.gain <= rec.gain_high and rec.gain > 0
        assert rec.drivers and all(isinstance(n, str) and isinstance(v, float) for n, v in rec.drivers)
        assert rec.model_version == "test-models-1" and re.fullmatch(r"[0-9a-f]{64}", rec.input_hash)
        assert rec.created_ts == state.t and rec.created_ts.tzinfo is not None
    assert len({r.tag for r in advice.recommendations}) == len(advice.recommendations)  # one change per setpoint


def test_no_advice_outside_par_or_above_max_step_whatever_the_current_values(plant, models):
    """Property: for random current setpoints (at, inside and beyond the PAR) and effects of either sign."""
    base = _state(plant)
    rng = np.random.default_rng(11)
    anywhere = copy.copy(models.domain)  # setpoints this odd are out of domain: let the limits alone decide here
    anywhere.check = lambda X: [Applicability(True, True, True, 0.0, 0.0, ())] * X.height
    seen = 0
    for trial in range(25):
        signs = {t.short: rng.choice([-1.0, 1.0]) for t in SITE.controllable("BR01")}
        rec = Recommender(SITE, dataclasses.replace(models, domain=anywhere, effect=synthetic_effect(
            SITE, lambda kind, tag, signs=signs: 0.08 * signs[tag], seed=trial)))
        current = {}
        for t in SITE.controllable("BR01"):
            lo, hi = t.par
            current[t.short] = float(rng.choice([lo, hi, rng.uniform(lo, hi), lo - 0.3 * t.max_step,
                                                 hi + 0.7 * t.max_step]))
        row = base.row.with_columns([pl.lit(v).alias(f"sp_{k}") for k, v in current.items()])
        state = dataclasses.replace(base, setpoints=current, row=row, last_change={})
        result = rec.recommend(state)
        for r in getattr(result, "recommendations", ()):
            tag = SITE.tags[f"BR01.{r.tag}"]
            assert r.current == current[r.tag]
            assert tag.par[0] <= r.proposed <= tag.par[1], (r.tag, r.current, r.proposed)
            assert abs(r.proposed - r.current) <= tag.max_step + 1e-9, (r.tag, r.current, r.proposed)
            seen += 1
    assert seen > 25


def test_a_recent_change_or_advice_holds_a_setpoint_for_its_minimum_interval(plant, models, tmp_path):
    _, hist, records, *_ = plant
    b = _batch(records, 1)
    t = b["start_ts"] + timedelta(hours=100)
    recent = [SetpointChange(b["batch_id"], tag.short, t - timedelta(hours=2), v, "operator", "test")
              for tag, v in ((x, records.setpoints_in_force(b["batch_id"], t)[x.short])
                             for x in SITE.controllable("BR01"))]
    records.add_setpoints(recent)
    result = Recommender(SITE, models).recommend(load_state(hist, records, SITE, b["batch_id"], t))
    assert isinstance(result, NoAdvice) and result.reason is NoAdviceReason.TOO_RECENT
    assert len(result.details) == 5 and all("minimum interval" in d for d in result.details)
    # An earlier recommendation counts too: TEMP_SP advised 3 h ago is held, the others are free.
    b2 = _batch(records, 2)
    t2 = b2["start_ts"] + timedelta(hours=100)
    store = RecommendationStore(records)
    store.add([Recommendation(b2["batch_id"], "BR01", "TEMP_SP", 37.0, 37.5, 0.02, 0.01, 0.03, 0.0, (), "m/1",
                              "0" * 64, t2 - timedelta(hours=3))])
    advice = Recommender(SITE, models).recommend(load_state(hist, records, SITE, b2["batch_id"], t2, store))
    assert isinstance(advice, Advice) and "TEMP_SP" not in {r.tag for r in advice.recommendations}
    assert any(h.startswith("TEMP_SP") for h in advice.held)


def test_stale_input_stops_advice_and_says_which_tag(plant, models, tmp_path):
    _, hist, records, *_ = plant
    b = _batch(records, 0)
    t = b["start_ts"] + timedelta(hours=100)
    cut = t - timedelta(hours=2)
    stale = copy_unit_history(hist, tmp_path / "stale", "BR01", b["start_ts"], t,
                              lambda f: (pl.col("tag") == "BR01.TEMP") & (pl.col("ts") >= cut))
    result = Recommender(SITE, models).recommend(_state(plant, hist=stale))
    assert isinstance(result, NoAdvice) and result.reason is NoAdviceReason.STALE_INPUT
    assert any("stale input: TEMP" in d for d in result.details)


def test_gapped_input_stops_advice(plant, models, tmp_path):
    _, hist, records, *_ = plant
    b = _batch(records, 0)
    t = b["start_ts"] + timedelta(hours=100)
    before = (pl.lit(t) - pl.col("ts")).dt.total_minutes()  # minutes before t
    holes = copy_unit_history(hist, tmp_path / "gaps", "BR01", b["start_ts"], t,  # 40 of every 60 min gone, still fresh
                              lambda f: (pl.col("tag") == "BR01.DO") & (before < 360) & (before % 60 >= 20))
    result = Recommender(SITE, models).recommend(_state(plant, hist=holes))
    assert isinstance(result, NoAdvice) and result.reason is NoAdviceReason.GAPPED_INPUT
    assert any("gapped input: DO" in d for d in result.details)


def test_a_batch_outside_the_applicability_domain_gets_no_advice(plant, models):
    state = _state(plant)
    odd = dataclasses.replace(state, row=state.row.with_columns(cov_age_years=pl.lit(140.0),
                                                                off_VCD_last=pl.lit(9e8)))
    result = Recommender(SITE, models).recommend(odd)
    assert isinstance(result, NoAdvice) and result.reason is NoAdviceReason.OUT_OF_DOMAIN
    assert any("cov_age_years" in d for d in result.details)


def test_outside_the_advisory_window_and_without_gain_no_advice(plant, models):
    early = Recommender(SITE, models).recommend(_state(plant, hours=12.0))
    assert isinstance(early, NoAdvice) and early.reason is NoAdviceReason.OUTSIDE_WINDOW
    flat = dataclasses.replace(models, effect=synthetic_effect(SITE, lambda k, t: 0.0))
    none = Recommender(SITE, flat).recommend(_state(plant))
    assert isinstance(none, NoAdvice) and none.reason is NoAdviceReason.NO_GAIN


def test_closed_loop_cli_pairs_share_their_randomness_and_advice_goes_through_signed_approval(models, tmp_path):
    from click.testing import CliRunner

    from cellwatch.cli import cli
    from cellwatch.validate import arm_result  # the release measurement the report uses

    saved = save_models(models, tmp_path / "models")
    out = tmp_path / "val"
    res = CliRunner().invoke(cli, ["validate-recommender", "--batches", "3", "--seed", "21", "--cadence-h", "24",
                                   "--models", str(saved), "--out", str(out), "--mlflow-db", str(tmp_path / "ml.db")])
    assert res.exit_code == 0, res.output
    assert "3 paired batches" in res.output and "outside PAR or above max step: 0" in res.output
    run_dir = out / "run-test-models-1-n3-s21"
    pairs = pl.read_parquet(run_dir / "pairs.parquet")
    # common random numbers: the recipe arm is exactly what the twin makes of the recipe plans alone
    plans = [recipe_plan(SITE, p) for p in schedule(SITE, 3, 21)]
    *_, harvest = run_bank(plans)
    for i, y in enumerate(pairs["yield_recipe"]):
        assert y == pytest.approx(arm_result(plans[i], harvest[i], 0).yield_cells, rel=1e-9)
    changes = int(pairs["changes"].sum())
    assert changes > 0
    with Records.open(run_dir / "records.db") as rec_db:
        recs = RecommendationStore(rec_db).table()
        assert recs.height == changes and set(recs["status"]) == {"accepted"}
        assert recs["signature_id"].null_count() == 0
        assert rec_db.setpoints().filter(pl.col("source") == "recommendation").height == changes
    from mlflow import MlflowClient

    ml = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'ml.db'}")
    [run] = ml.search_runs([ml.get_experiment_by_name("cellwatch-recommender-validation").experiment_id])
    assert run.data.tags["model_version"] == "test-models-1"
    assert run.data.metrics["outside_limits"] == 0.0 and run.data.metrics["setpoint_changes"] == changes
