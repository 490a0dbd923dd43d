"""The parts of the Models page: registry views, drift, promotion and retraining forms."""

from __future__ import annotations

import polars as pl
import streamlit as st

from dashboards import cached, charts, ui
from dashboards import model_registry as mr


@st.cache_resource(show_spinner="Connecting to the MLflow store ...", max_entries=4)
def _client(data: str):  # noqa: ANN202 - an MlflowClient; mlflow is imported lazily
    return mr.client(ui._plant(data))


@st.cache_data(ttl=15, max_entries=8, show_spinner=False)
def registry_versions(data: str) -> list[mr.Version]:
    return mr.versions(_client(data))


@st.cache_data(ttl=15, max_entries=8, show_spinner=False)
def _runs(data: str):  # noqa: ANN202
    return mr.runs(_client(data))


@st.cache_data(ttl=60, max_entries=16, show_spinner=False)
def _gate(data: str, version: mr.Version, versions: tuple[mr.Version, ...]) -> dict:
    return mr.gate(ui._plant(data), _client(data), version, list(versions))


def champion_challenger(versions: list[mr.Version]) -> None:
    models = sorted({v.model for v in versions})
    if not models:
        st.info("The MLflow store holds no registered model yet.")
        return
    for name in models:
        st.subheader(name)
        table = mr.compare(versions, name)
        if table.height:
            st.dataframe(table, hide_index=True, width="stretch")
        else:
            st.caption("No champion or challenger alias set.")


def versions_and_runs(versions: list[mr.Version]) -> None:
    if not mr.store_exists(ui.plant()):
        return
    st.subheader("Registered versions")
    st.dataframe(mr.versions_frame(versions), hide_index=True, width="stretch")
    st.subheader("Runs")
    runs = _runs(ui.data_key())
    if runs.height:
        st.dataframe(runs, hide_index=True, width="stretch")
    else:
        st.caption("No runs.")


@st.cache_data(ttl=300, max_entries=8, show_spinner="Comparing live inputs with the training period ...")
def _drift(data: str, now, trained_until) -> pl.DataFrame:  # noqa: ANN001
    return mr.drift(ui._plant(data), now, trained_until)


def drift(versions: list[mr.Version]) -> None:
    """PSI of each live input against the champion's training period (or the period before, without one)."""
    now = cached.now(ui.data_key())
    if now is None:
        st.info("No telemetry yet.")
        return
    champ = next((v for v in versions if mr.CHAMPION in v.aliases), None)
    ref = f"the champion {champ.model} v{champ.version} was registered" if champ else "that (no champion yet)"
    st.caption(f"Last 24 h of data against the 14 days before {ref}"
               + f". PSI < {mr.DRIFT_WATCH} stable, up to {mr.DRIFT_ALERT} watch, above drifted.")
    if not st.toggle("Compute drift now", key="drift_on", help="Reads two weeks of telemetry (a second or two)"):
        return
    table = _drift(ui.data_key(), now, champ.created if champ else None)
    charts.show(charts.psi_chart(table, sorted(set(table["unit kind"]))), width="content")
    st.dataframe(table, hide_index=True, width="stretch")


def promote_and_retrain(versions: list[mr.Version]) -> None:
    plant = ui.plant()
    st.subheader("Retrain")
    if not ui.can("model.train"):
        st.caption("Retraining needs the permission model.train (data scientists).")
    elif mr.registry_api() is None:
        st.info("Training needs the models package (models/registry.py); train from the command line meanwhile.")
    elif st.button("Retrain on the newest data", key="retrain", icon=":material/model_training:"):
        with st.spinner(f"Training on {plant.training_data} (tuning, fitting, evaluating on the locked hold-out); "
                        "this takes minutes ..."):
            summary = mr.retrain(plant)
        registry_versions.clear()
        st.success(f"Trained: {summary}. The new versions are challengers; promote them through the gate.")
    st.subheader("Promote a version to champion")
    if not ui.can("model.promote"):
        st.info(f"Your role ({ui.current().role}) may review models but not promote them: that needs the "
                "permission model.promote (data scientists), with an e-signature.", icon=":material/lock:")
        return
    candidates = [v for v in versions if mr.CHAMPION not in v.aliases]
    if not candidates:
        st.caption("No registered version to promote.")
        return
    labels = {f"{v.model} v{v.version}" + (f" ({', '.join(v.aliases)})" if v.aliases else ""): v for v in candidates}
    chosen = labels[st.selectbox("Version", list(labels), key="promote_pick")]
    verdict = _gate(ui.data_key(), chosen, tuple(versions))
    (st.success if verdict["passed"] else st.warning)(f"Gate: {verdict['why']}")
    if verdict["checks"]:
        st.dataframe(pl.DataFrame(verdict["checks"]), hide_index=True)
    with st.form("promote"):
        reason, password = ui.sign_fields("promote", "Reason for the promotion")
        go = st.form_submit_button("Sign and promote", type="primary", disabled=not verdict["passed"])
    if go:
        with ui.errors("the promotion was refused"):
            sig = mr.promote(plant, ui.current(), chosen.model, chosen.version, reason, password,
                             verdict["report_hash"] or "", verdict)
            registry_versions.clear()
            st.session_state["cw_flash_models"] = f"{chosen.model} v{chosen.version} is champion: {sig.manifest()}"
            st.rerun()
