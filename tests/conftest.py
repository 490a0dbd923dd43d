"""Shared fixtures. The panel's plant (a small generated history with a live tail) is built once per session,
only when a panel test asks for it."""

from __future__ import annotations

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
    import streamlit.testing.v1.app_test as app_test

    import panel_scenario as ps
    from panel_app import NavigationPages

    mp = pytest.MonkeyPatch()
    mp.setattr(app_test, "PagesManager", NavigationPages)
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
