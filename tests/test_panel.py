"""The panel under every role with AppTest: what each role sees, the signed actions, and the refusals.

Real data: a small generated history with a live tail (tests/panel_scenario.py), a records DB with users.
`run_every` fragments run once per AppTest run (they do not tick here; the browser test covers that).
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import panel_scenario as ps
import polars as pl
import pytest
from panel_app import APP, frame, login, open_page, open_tab, refused, texts
from streamlit.testing.v1 import AppTest

from dashboards import actions, ui
from plant.recommendations import RecommendationStore
from plant.records import Records
from plant.roles import AccessDenied

PAGES = [p.key for p in ui.PAGES]
pytestmark = pytest.mark.usefixtures("panel_env")


@pytest.fixture(scope="module")
def plant(panel_plant):
    return panel_plant


# ------------------------------------------------------------------------------------------ login and menus

def test_login_refuses_a_wrong_password_and_records_it(plant):
    at = login("olga", "not-the-password")
    assert "Refused: authentication failed for 'olga'" in texts(at)
    assert "cw_session" not in at.session_state
    fails = plant.audit.entries(actor="olga").filter(pl.col("action") == "login_failed")
    assert fails.height >= 1


def test_login_shows_the_role_menu_and_the_overview_then_logout(plant):
    at = login("olga")
    assert at.title[0].value == "Plant overview"
    links = [el.proto.label for el in at.sidebar.get("page_link")]
    assert links == [p.title for p in ui.pages_for("operator")]
    assert "Models" not in links
    at.sidebar.button(key="logout").click().run()
    assert "cw_session" not in at.session_state
    assert at.text_input(key="login_user") is not None
    assert plant.audit.entries(actor="olga").filter(pl.col("action") == "logout").height >= 1


@pytest.mark.parametrize("role", ["operator", "engineer", "qa", "data_scientist", "admin"])
def test_every_page_under_every_role(role):
    """A role's pages render without an error; the others are refused (also when opened by URL)."""
    at = login(ps.BY_ROLE[role])
    for key in PAGES:
        open_page(at, key)
        spec = next(p for p in ui.PAGES if p.key == key)
        if role in spec.roles:
            assert not at.error, (role, key, [e.value for e in at.error])
            assert at.title and at.title[0].value, (role, key)
        else:
            assert refused(at), (role, key)
            assert f"not available to role {role}" in texts(at)


def test_login_asks_for_an_id_token_when_an_identity_provider_is_configured(monkeypatch, tmp_path):
    Records.open(tmp_path / "records.db").close()
    cfg = tmp_path / "identity.toml"
    cfg.write_text('[identity]\nprovider = "oidc"\nissuer = "https://idp.plant.example"\nclient_id = "cellwatch"\n'
                   'jwks_uri = "https://idp.plant.example/jwks"\n')
    monkeypatch.setenv("CELLWATCH_DATA", str(tmp_path))
    monkeypatch.setenv("CELLWATCH_IDENTITY", str(cfg))
    at = AppTest.from_file(APP, default_timeout=90).run()
    assert at.text_input(key="login_secret").label == "ID token"
    assert "identity provider https://idp.plant.example" in texts(at)


def test_a_folder_without_records_is_a_message_not_a_traceback(monkeypatch, tmp_path):
    monkeypatch.setenv("CELLWATCH_DATA", str(tmp_path / "nothing"))
    at = AppTest.from_file(APP, default_timeout=90).run()
    assert not at.exception
    assert "no records.db here" in at.error[0].value and "cellwatch demo" in at.error[0].value


def test_session_expiry_returns_to_login_with_a_message():
    at = login("ed")
    s = at.session_state["cw_session"]
    at.session_state["cw_session"] = replace(s, last_seen_ts=s.last_seen_ts - timedelta(hours=2))
    at.run()
    assert "cw_session" not in at.session_state
    assert "expired" in texts(at)


# ------------------------------------------------------------------------------------------ process pages

def test_overview_shows_every_unit_and_room(panel_scenario):
    at = open_page(login("olga"), "overview")
    page = texts(at)
    for unit, batch in panel_scenario.running.items():
        assert f"**{unit}**" in page and batch in page
    assert "no yield prediction (no model registered)" in page
    rooms = frame(at.dataframe[0])
    assert sorted(rooms["room"]) == ["CR-A1", "CR-B1", "CR-C1", "CR-C2", "CR-D1"]
    assert rooms["grade"].to_list() == sorted(rooms["grade"])  # cleanest grade first


def test_batch_page_running_and_finished_batches():
    at = open_page(login("olga"), "batch")
    assert at.metric[1].value == "running"
    [trends] = at.get("vega_lite_chart")  # one stacked view: TEMP, PH, DO, AGIT, CO2 against their limits
    assert len(json.loads(trends.proto.spec)["vconcat"]) == 5
    assert "No model is registered yet" in texts(open_tab(at, "batch_tab", "Predictions"))  # empty state
    finished = next(o for o in at.selectbox(key="batch_select").options if "harvested" in o)
    at.selectbox(key="batch_select").set_value(finished.split(" · ")[1]).run()
    assert at.metric[1].value == "harvested"
    open_tab(at, "batch_tab", "Offline samples")
    analytes = set(frame(at.dataframe[0])["analyte"])
    assert {"VCD", "VIAB"} <= analytes


def test_cleanroom_page(plant):
    at = open_page(login("ed"), "cleanroom")
    summary = frame(at.dataframe[1])
    assert set(summary["grade"]) == {"A", "B", "C", "D"}
    assert (summary.filter(pl.col("grade") == "A")["in operation limit"] == 3520).any()


def test_alarms_operator_acknowledges_but_may_not_shelve(plant):
    at = open_page(login("olga"), "alarms")
    assert at.radio(key="alarm_action_kind").options == ["Acknowledge"]
    unacked = set(plant.journal.read().group_by("alarm_id").last()
                  .filter(pl.col("state").is_in(["UNACK", "RTN_UNACK"]))["alarm_id"])
    target = next(a for a in at.selectbox(key="alarm_pick").options if a in unacked)
    at.selectbox(key="alarm_pick").set_value(target)
    at.text_input(key="alarm_reason").input("seen on the overview")
    at.button(key="FormSubmitter:alarm_action-Apply").click().run()
    assert "ACK" in texts(at)
    assert plant.journal.read(alarm_id=target)["event"][-1] == "ACK"
    assert plant.audit.entries(entity="alarm", entity_id=target, actor="olga").height == 1
    with pytest.raises(AccessDenied, match="alarm.shelve"):
        actions.shelve_alarm(plant, at.session_state["cw_session"], target, "trying", 1.0)


def test_alarms_engineer_shelves_and_qa_only_reads(plant):
    at = open_page(login("ed"), "alarms")
    target = at.selectbox(key="alarm_pick").options[-1]
    at.selectbox(key="alarm_pick").set_value(target)
    at.radio(key="alarm_action_kind").set_value("Shelve")
    at.number_input(key="alarm_hours").set_value(1.5)
    at.text_input(key="alarm_reason").input("sensor being replaced")
    at.button(key="FormSubmitter:alarm_action-Apply").click().run()
    assert f"{target}: SHELVE → SHELVED" in texts(at)
    last = plant.journal.read(alarm_id=target).row(-1, named=True)
    assert last["event"] == "SHELVE" and last["actor"] == "ed"
    qa = open_page(login("quinn"), "alarms")
    assert "may view alarms but not acknowledge" in texts(qa)
    open_tab(qa, "alarm_tab", "KPIs")
    kpis = next(frame(df) for df in qa.dataframe if "KPI" in frame(df).columns)  # the KPI tab
    assert "alarms per operator per 10 min (mean)" in kpis["KPI"].to_list()


# ------------------------------------------------------------------------------------------ recommendations

def _new_recommendation(plant, scenario, proposed: float) -> str:
    unit = min(scenario.running)
    rec = ps.recommendation(scenario.running[unit], unit, scenario.now + timedelta(minutes=proposed * 10), proposed)
    return RecommendationStore(plant.records).add([rec])[0]


def _decision_form(at: AppTest, rec_id: str, choice: str, password: str, reason: str = "", value=None) -> None:
    key = f"dec_{rec_id}"
    at.radio(key=f"{key}_choice").set_value(choice)
    if value is not None:
        at.number_input(key=f"{key}_value").set_value(value)
    at.text_input(key=f"{key}_reason").input(reason)
    at.text_input(key=f"{key}_pw").input(password)
    at.button(key=f"FormSubmitter:{key}-Sign decision").click().run()


def test_operator_accepts_advice_with_an_e_signature(plant, panel_scenario):
    rec_id = _new_recommendation(plant, panel_scenario, 37.4)
    at = open_page(login("olga"), "recommendations")
    _decision_form(at, rec_id, "Accept", "wrong-password")
    assert "Refused" in texts(at) and plant.recommendations.get(rec_id)[1] == "pending"
    _decision_form(at, rec_id, "Accept", ps.USERS["olga"][2])
    assert plant.recommendations.get(rec_id)[1] == "accepted"
    assert f"{rec_id} accepted: signed by Olga Operator (olga) - accepted" in texts(at)
    trail = plant.audit.entries(entity="recommendation", entity_id=rec_id)
    assert trail["action"].to_list() == ["sign", "decide"]
    assert rec_id in frame(at.dataframe[-1])["id"].to_list()  # the history of decisions


def test_modification_outside_the_par_is_refused_and_inside_it_signed(plant, panel_scenario):
    rec_id = _new_recommendation(plant, panel_scenario, 37.3)
    at = open_page(login("ed"), "recommendations")
    _decision_form(at, rec_id, "Modify", ps.USERS["ed"][2], "too far", 38.5)
    assert "outside its proven acceptable range" in texts(at)
    _decision_form(at, rec_id, "Modify", ps.USERS["ed"][2], "half the step", 37.2)
    row = plant.recommendations.table().filter(pl.col("id") == rec_id).row(0, named=True)
    assert row["status"] == "modified" and row["applied_value"] == 37.2 and row["decided_by"] == "ed"


def test_qa_cannot_accept_a_setpoint_change(plant, panel_scenario):
    rec_id = _new_recommendation(plant, panel_scenario, 37.6)
    at = open_page(login("quinn"), "recommendations")
    assert "may read advice but not decide" in texts(at)
    assert not [b for b in at.button if "Sign decision" in b.label]
    with pytest.raises(AccessDenied, match="recommendation.decide"):
        actions.decide_recommendation(plant, at.session_state["cw_session"], rec_id, "accepted",
                                      ps.USERS["quinn"][2])
    assert plant.recommendations.get(rec_id)[1] == "pending"
    denied = plant.audit.entries(actor="quinn").filter(pl.col("action") == "access_denied")
    assert "recommendation.decide" in denied["entity_id"].to_list()
