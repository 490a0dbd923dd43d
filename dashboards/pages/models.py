"""Models: MLflow runs and registered versions, champion vs challenger, drift of live inputs against the
training data, retrain and promote through the gate with an e-signature, and a link to the MLflow UI."""

import os

import streamlit as st

from dashboards import model_registry as mr
from dashboards import models_view, ui

session = ui.guard("models")
plant = ui.plant()
st.title("Models")
if flash := st.session_state.pop("cw_flash_models", None):
    st.success(flash, icon=":material/verified:")

ui_url = os.environ.get("CELLWATCH_MLFLOW_UI", "http://127.0.0.1:5000")
st.link_button("Open the MLflow UI", ui_url, icon=":material/open_in_new:")
st.caption(f"Tracking store `{plant.mlflow_uri}` (artifacts under `mlruns/` beside it). Start the UI with "
           f"`mlflow ui --backend-store-uri {plant.mlflow_uri}`.")

def versions() -> list:
    """Registered versions, or an empty list (with a message) when no model was trained yet."""
    if not mr.store_exists(plant):
        st.info("No model has been trained yet: there is no MLflow store for this plant. Predictions, risk and "
                "recommendations appear across the panel once a model is trained and promoted.")
        return []
    return models_view.registry_versions(ui.data_key())


SECTIONS = {
    "Champion vs challenger": lambda: models_view.champion_challenger(versions()),
    "Versions and runs": lambda: models_view.versions_and_runs(versions()),
    "Drift": lambda: models_view.drift(versions()),
    "Promote and retrain": lambda: models_view.promote_and_retrain(versions()),
    "Promotions": lambda: st.dataframe(mr.promotion_history(plant), hide_index=True, width="stretch"),
}
for label, tab in ui.lazy_tabs(list(SECTIONS), "models_tab"):
    with tab, ui.errors(f"the {label.lower()} tab"):
        SECTIONS[label]()
