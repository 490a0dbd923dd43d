"""Shared fixtures. The panel's plant (a small generated history with a live tail) is built once per session,
only when a panel test asks for it."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(scope="session")
def panel_scenario(tmp_path_factory):
    """A data folder with history, running batches, users of every role, alarms, a deviation and advice."""
    import panel_scenario as ps

    scenario, _ = ps.build(tmp_path_factory.mktemp("panel") / "plant", batches=10, live_hours=30)
    return scenario


@pytest.fixture(scope="module")
def panel_env(panel_scenario):
    """Point the in-process panel at the scenario (and the test users' argon2 costs); restored afterwards."""
    import panel_scenario as ps
    import streamlit.testing.v1.app_test as app_test
    from panel_app import NavigationPages

    mp = pytest.MonkeyPatch()
    mp.setattr(app_test, "PagesManager", NavigationPages)
    # AppTest's script runner installs the app as sys.modules["__main__"] and leaves it there; a spawned
    # process started later in this pytest run would then import the panel as its main module. Restored on undo.
    mp.setitem(sys.modules, "__main__", sys.modules["__main__"])
    mp.setenv("CELLWATCH_DATA", str(panel_scenario.data))
    mp.setenv("CELLWATCH_IDENTITY", str(ps.IDENTITY_FILE))
    for name in ("CELLWATCH_HISTORY", "CELLWATCH_MLFLOW_DB", "CELLWATCH_SITE"):
        mp.delenv(name, raising=False)
    yield panel_scenario
    mp.undo()


@pytest.fixture(scope="module")
def panel_plant(panel_env):
    """The stores the in-process panel uses (the same cached objects)."""
    from dashboards import ui
    from dashboards.context import PanelArgs

    return ui._plant(PanelArgs(panel_env.data).key())


# ---- models (issue 4): one small twin history, one MLflow store and one training run per session ----------

@pytest.fixture(scope="session")
def model_history(tmp_path_factory):
    """20 twin batches (fault rates x3 plus one injected fault in every second batch): the models' test plant."""
    from plant.sim.history import generate_history
    from plant.sim.inject import every_nth_batch
    from plant.site import load_demo_site

    site = load_demo_site()
    out = tmp_path_factory.mktemp("model-history")
    generate_history(site, out, 20, 11, injections=every_nth_batch(site, 20, 11), fault_rate_scale=3.0, workers=1)
    return out


@pytest.fixture(scope="session")
def lenient_config(tmp_path_factory):
    """Acceptance criteria a 20-batch plant can meet: the gate tests are about the gate, not the figures."""
    path = tmp_path_factory.mktemp("model-config") / "models.toml"
    path.write_text("n_trials = 2\n[yield_acceptance]\nmax_rmse_log10_day5 = 1.0\nmin_coverage = 0.3\n"
                    "max_coverage = 1.0\n[deviation_acceptance]\nmin_detection_rate = 0.0\n"
                    "max_false_alarms_per_batch_day = 10.0\n")
    return path


@pytest.fixture(scope="session")
def trained(model_history, lenient_config, tmp_path_factory):
    """One tracked training run (2 Optuna trials per model) into a fresh MLflow store: (result, tracking)."""
    from models.config import load_config
    from models.pipeline import train
    from models.registry import Tracking
    from plant.site import load_demo_site

    store = tmp_path_factory.mktemp("mlflow")
    tracking = Tracking(store / "mlflow.db", store / "mlruns")
    result = train(model_history, load_demo_site(), load_config(lenient_config), tracking, n_trials=2,
                   out_dir=tmp_path_factory.mktemp("report"))
    return result, tracking
