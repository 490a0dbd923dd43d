"""Models: MLflow runs and registered versions, champion vs challenger, drift of live inputs against the
training data, retrain and promote through the gate with an e-signature, and a link to the MLflow UI."""

import os

import streamlit as st

from dashboards import model_registry as mr, models_view, ui

session = ui.guard("models")
plant = ui.plant()
st.title("Models")
if flash := st.session_state.pop("cw_flash_models", None):
    st.success(flash, icon=":material/verified:")

ui_url = os.environ.get("CELLWATCH_MLFLOW_UI", "http://127.0.0.1:5000")
st.link_button("Open the MLflow UI", ui_url, icon=":material/open_in_new:")
st.caption(f"Tracking store `{plant.mlflow_uri}` (artifacts under `mlruns/` beside it). Start the UI with "
           f"`mlflow ui --backend-store-uri {plant.mlflow_uri}`.")

tabs = st.tabs(["Champion vs challenger", "Versions and runs", "Drift", "Promote and retrain", "Promotions"])
versions = []
with tabs[0], ui.errors("reading the model registry"):
    if not mr.store_exists(plant):
        st.info("No model has been trained yet: there is no MLflow store in this data folder. Predictions, "
                "risk and recommendations appear across the panel once a model is trained and promoted.")
    else:
        versions = models_view.registry_versions(ui.data_key())
        models_view.champion_challenger(versions)
with tabs[1], ui.errors("reading MLflow"):
    models_view.versions_and_runs(versions)
with tabs[2], ui.errors("computing drift"):
    models_view.drift(versions)
with tabs[3], ui.errors("the model action"):
    models_view.promote_and_retrain(versions)
with tabs[4], ui.errors("reading promotions"):
    st.dataframe(mr.promotion_history(plant), hide_index=True, width="stretch")
