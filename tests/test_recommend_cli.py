"""`cellwatch recommend train|run` on a small history: a running batch gets its advice stored as pending, a
second pass stores nothing twice, and a tag with advice still pending gets no second recommendation."""

from __future__ import annotations

import copy
from datetime import timedelta

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from cellwatch.cli import cli
from models.recommend import RecommenderModels
from models.recommend_train import load_models, save_models
from plant.audit import AuditTrail
from plant.recommendations import RecommendationStore
from plant.records import Records
from plant.sim.history import generate_history
from plant.site import load_demo_site
from plant.users import Users
from tests.panel_scenario import FAST
from tests.recommend_helpers import synthetic_effect

SITE = load_demo_site()


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """A 24-batch history, the recommender trained on it by the CLI, and a copy of those models whose response
    surface has a known effect (24 batches are too few to learn one) and whose setpoint ranges are the site's."""
    root = tmp_path_factory.mktemp("reccli")
    generate_history(SITE, root / "history", 24, seed=3, workers=1)
    got = CliRunner().invoke(cli, ["recommend", "train", "--history", str(root / "history"), "--out",
                                   str(root / "trained"), "--telemetry-batches", "24", "--boot", "20"])
    assert got.exit_code == 0, got.output
    assert "recommender recommender-" in got.output
    trained = load_models(root / "trained")
    domain = copy.copy(trained.domain)
    domain.ranges_ = {k: ((-np.inf, np.inf) if k.startswith("sp_") else v) for k, v in trained.domain.ranges_.items()}
    save_models(RecommenderModels(synthetic_effect(SITE, lambda kind, tag: 0.05), domain, trained.deviation,
                                  "test-models-cli"), root / "models")
    return root


def _run(root, at) -> str:
    got = CliRunner().invoke(cli, ["recommend", "run", "--data", str(root / "history"), "--models",
                                   str(root / "models"), "--at", at.isoformat(), "--once"])
    assert got.exit_code == 0, got.output
    return got.output


def test_a_running_batch_gets_pending_advice_once(history):
    with Records.open(history / "history" / "records.db") as records:
        b = records.batches(unit="BR01", status="harvested").row(-1, named=True)
    at = b["start_ts"] + timedelta(hours=100)  # running then, inside the advisory window
    out = _run(history, at)
    with Records.open(history / "history" / "records.db") as records:
        pending = RecommendationStore(records).table(status="pending")
    mine = pending.filter(pl.col("batch_id") == b["batch_id"])
    assert mine.height >= 1, out
    assert f"BR01 {b['batch_id']} day 4.2: REC-" in out and "pending" in out
    assert (mine["created_ts"] == at).all() and (mine["model_version"] == "test-models-cli").all()
    assert "no advice because" in out or pending.height > mine.height  # the other running batches: advice or why not

    again = _run(history, at)  # the same data time: nothing new; the batches with pending advice are not asked
    assert "0 new recommendation(s) stored" in again, again
    assert f"BR01 {b['batch_id']} day 4.2: not asked: {mine.height} recommendation(s) await a decision" in again
    with Records.open(history / "history" / "records.db") as records:
        assert RecommendationStore(records).table(status="pending").height == pending.height

    # past every tag's minimum interval the recommender would advise again, but the batch's advice is undecided
    later = at + timedelta(hours=max(t.min_interval_h for t in SITE.controllable("BR01")) + 1)
    third = _run(history, later)
    with Records.open(history / "history" / "records.db") as records:
        store = RecommendationStore(records)
        assert store.table(status="pending", batch_id=b["batch_id"]).height == mine.height, third
        users = Users(records, AuditTrail(records), identity=FAST)
        users.init_admin("root", "Ada Admin", "admin-pass-9876")
        users.create("root", "ed", "Ed Engineer", "engineer", "engine-pass-1234")
        for rid in mine["id"]:
            store.decide(users, "ed", "engine-pass-1234", rid, "rejected", reason="not now")
    fourth = _run(history, later)  # decided: the batch is asked again, and its tags are past their interval
    with Records.open(history / "history" / "records.db") as records:
        fresh = RecommendationStore(records).table(status="pending", batch_id=b["batch_id"])
    assert fresh.height >= 1 and (fresh["created_ts"] == later).all(), fourth
