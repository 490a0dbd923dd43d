"""The panel's QA and Models pages with AppTest: deviation lifecycle with a signed closure and its PDF,
per-batch audit-trail review, audit search and export, the model registry with promotion through the gate."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import panel_scenario as ps
import polars as pl
import pytest
from panel_app import frame, login, open_page, open_tab, texts
from pypdf import PdfReader

from dashboards import actions
from dashboards import model_registry as mr
from plant.roles import AccessDenied

pytestmark = pytest.mark.usefixtures("panel_env")


def test_operator_sees_deviations_only_and_opens_one(panel_plant, panel_scenario):
    at = open_page(login("olga"), "qa")
    assert [t.label for t in at.tabs] == ["Deviations"]
    at.text_input(key="dev_new_title").input("BR02 sampling port leak")
    at.text_area(key="dev_new_desc").input("A drop of medium at the sampling port during the daily sample.")
    at.selectbox(key="dev_new_owner").set_value("BR02")
    at.date_input(key="dev_new_day").set_value(panel_scenario.now.date())
    at.button(key="FormSubmitter:dev_open-Open deviation").click().run()
    assert "opened; linked batches: " + panel_scenario.running["BR02"] in texts(at)
    assert "BR02 sampling port leak" in panel_plant.deviations.list()["title"].to_list()


def test_deviation_lifecycle_engineer_investigates_qa_closes_with_signature_and_pdf(panel_plant, panel_scenario):
    dev_id = panel_scenario.deviation_id
    eng = open_page(login("ed"), "qa")
    eng.selectbox(key="dev_pick").set_value(dev_id).run()
    eng.radio(key="dev_to").set_value("investigation")
    eng.selectbox(key="dev_class").set_value("minor")
    eng.text_input(key="dev_move_reason").input("assessing the bag")
    eng.button(key=f"FormSubmitter:dev_move_{dev_id}-Apply").click().run()
    assert f"{dev_id} is now investigation" in texts(eng)
    eng.selectbox(key="dev_pick").set_value(dev_id).run()
    eng.text_area(key="dev_root").input("bag folded when the rocker started")
    eng.text_area(key="dev_impact").input("none: no leak, culture values unchanged")
    eng.text_area(key="dev_capa").input("check bag placement before rocking")
    eng.text_input(key="dev_move_reason").input("root cause found")
    eng.button(key=f"FormSubmitter:dev_move_{dev_id}-Apply").click().run()
    assert panel_plant.deviations.get(dev_id).state == "capa"
    # only QA closes, with an e-signature; the engineer is shown why not
    eng.selectbox(key="dev_pick").set_value(dev_id).run()
    assert "closed (deviation.close) - not with your role's permissions" in texts(eng)
    qa = open_page(login("quinn"), "qa")
    qa.selectbox(key="dev_pick").set_value(dev_id).run()
    qa.text_input(key="dev_close_reason").input("CAPA adequate")
    qa.text_input(key="dev_close_pw").input("wrong")
    qa.button(key=f"FormSubmitter:dev_move_{dev_id}-Sign and close").click().run()
    assert "Refused" in texts(qa) and panel_plant.deviations.get(dev_id).state == "capa"
    qa.text_input(key="dev_close_pw").input(ps.USERS["quinn"][2])
    qa.button(key=f"FormSubmitter:dev_move_{dev_id}-Sign and close").click().run()
    dev = panel_plant.deviations.get(dev_id)
    assert dev.state == "closed" and dev.closed_by == "quinn" and panel_plant.deviations.signature_valid(dev_id)
    qa.selectbox(key="dev_pick").set_value(dev_id).run()
    qa.button(key=f"pdf_{dev_id}").click().run()
    pdf = qa.session_state[f"cw_pdf_{dev_id}"]
    text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)
    assert dev_id in text and "Quinn QA" in text


def test_qa_reviews_a_batch_audit_trail_with_a_signature(panel_plant, panel_scenario):
    batch = panel_scenario.running[min(panel_scenario.running)]
    at = open_tab(open_page(login("quinn"), "qa"), "qa_tab", "Batch review")
    at.selectbox(key="rv_batch").set_value(batch).run()
    assert "audit trail not reviewed by QA" in texts(at)
    at.text_input(key="rv_pw").input(ps.USERS["quinn"][2])
    at.button(key="FormSubmitter:rv_sign-Sign review").click().run()
    assert f"{batch}: reviewed - Quinn QA (quinn) - reviewed" in texts(at)
    assert panel_plant.review.status(batch).reviewed


def test_audit_search_and_export_is_itself_audited(panel_plant, panel_scenario):
    unit = max(panel_scenario.running)
    [rec_id] = panel_plant.recommendations.add([ps.recommendation(panel_scenario.running[unit], unit,
                                                                  panel_scenario.now, 37.2)])
    olga = panel_plant.users.authenticate("olga", ps.USERS["olga"][2])
    actions.decide_recommendation(panel_plant, olga, rec_id, "rejected", ps.USERS["olga"][2], "culture too young")
    at = open_tab(open_page(login("quinn"), "qa"), "qa_tab", "Audit trail")
    at.text_input(key="au_text").input(rec_id).run()
    found = frame(at.dataframe[-1])
    assert found["action"].to_list() == ["decide", "sign"]  # newest first
    assert (found["entity_id"] == rec_id).all() and "culture too young" in found["reason"].to_list()
    at.button(key="au_export").click().run()
    csv = at.session_state["cw_audit_csv"]
    assert pl.read_csv(csv).height == found.height
    export = panel_plant.audit.entries(actor="quinn", entity="audit_trail")
    assert export["action"].to_list()[-1] == "export"
    at.button(key="au_verify").click().run()
    assert "chain intact" in texts(at)
    # an engineer reads the trail but may not export it
    eng = open_tab(open_page(login("ed"), "qa"), "qa_tab", "Audit trail")
    assert eng.text_input(key="au_text") is not None and not [b for b in eng.button if b.key == "au_export"]
    with pytest.raises(AccessDenied, match="audit.export"):
        actions.export_audit(panel_plant, eng.session_state["cw_session"], found, {})


# ------------------------------------------------------------------------------------------ models

def test_models_page_empty_state_and_refusals(panel_plant):
    at = open_page(login("dana"), "models")
    assert "No model has been trained yet" in texts(at)
    assert not panel_plant.mlflow_db.exists()  # looking does not create a store
    olga = login("olga")
    with pytest.raises(AccessDenied, match="model.promote"):
        mr.promote(panel_plant, olga.session_state["cw_session"], "batch_yield", "1", "because", "x", "0" * 64,
                   {"passed": True})


@pytest.fixture(scope="module")
def registered(panel_plant):
    """An MLflow store with one yield model version (challenger) with hold-out metrics and a report."""
    import mlflow

    mc = mlflow.MlflowClient(tracking_uri=panel_plant.mlflow_uri, registry_uri=panel_plant.mlflow_uri)
    exp = mc.create_experiment("batch-yield", artifact_location=(panel_plant.data / "mlruns").resolve().as_uri())
    run = mc.create_run(exp, run_name="yield-tuned")
    for name, value in {"holdout.rmse_log10_day5": 0.21, "holdout.coverage": 0.81}.items():
        mc.log_metric(run.info.run_id, name, value)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "evaluation.json"
        report.write_text(json.dumps({"rmse_log10_day5": 0.21, "coverage": 0.81}))
        mc.log_artifact(run.info.run_id, str(report))
    mc.set_terminated(run.info.run_id)
    mc.create_registered_model("batch_yield")
    version = mc.create_model_version("batch_yield", f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    mc.set_registered_model_alias("batch_yield", mr.CHALLENGER, version.version)
    return mc


def test_data_scientist_promotes_through_the_gate_with_a_signature(panel_plant, registered):
    at = open_page(login("dana"), "models")
    assert "holdout.rmse_log10_day5" in frame(at.dataframe[0])["metric"].to_list()  # champion vs challenger
    open_tab(at, "models_tab", "Promote and retrain")
    assert "Gate: all checks hold" in texts(at)
    at.text_input(key="promote_reason").input("meets the acceptance criteria on the locked hold-out")
    at.text_input(key="promote_pw").input(ps.USERS["dana"][2])
    at.button(key="FormSubmitter:promote-Sign and promote").click().run()
    assert "batch_yield v1 is champion: Dana Scientist (dana) - approved" in texts(at)
    assert registered.get_registered_model("batch_yield").aliases == {mr.CHAMPION: 1}  # no longer challenger
    history = mr.promotion_history(panel_plant)
    assert history["outcome"].to_list()[-1] == "promoted" and history["decided_by"].to_list()[-1] == "dana"
    trail = panel_plant.audit.entries(entity="model", entity_id="batch_yield")
    assert trail["action"].to_list()[-2:] == ["sign", "promote"]
    qa = open_tab(open_page(login("quinn"), "models"), "models_tab", "Promote and retrain")
    assert "may review models but not promote them" in texts(qa)


def test_drift_of_live_inputs(panel_plant, panel_scenario):
    table = mr.drift(panel_plant, panel_scenario.now, None)
    assert {"rocking_bag", "stirred_tank"} == set(table["unit kind"])
    assert table["PSI"].drop_nulls().len() > 0
    assert set(table["verdict"]) <= {"stable", "watch", "drifted", "-"}
    at = open_tab(open_page(login("dana"), "models"), "models_tab", "Drift")
    at.toggle(key="drift_on").set_value(True).run()
    assert not at.exception
    assert any("PSI" in frame(df).columns for df in at.dataframe)
