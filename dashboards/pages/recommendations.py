"""Recommendations: pending setpoint advice (gain, interval, drivers, model version), a signed decision on
each (accept, modify or reject with a reason), and the history of decisions."""

import json

import polars as pl
import streamlit as st

from dashboards import actions, charts, ui

session = ui.guard("recommendations")
plant = ui.plant()
st.title("Recommendations")
if flash := st.session_state.pop("cw_flash_rec", None):
    st.success(flash, icon=":material/verified:")

may_decide = ui.can("recommendation.decide")
if not may_decide:
    st.info(f"Your role ({session.role}) may read advice but not decide on setpoint changes: that needs the "
            "permission recommendation.decide (operators and engineers).", icon=":material/lock:")


def pending_card(rec: dict) -> None:
    tag = plant.site.tags.get(f"{rec['unit']}.{rec['tag']}")
    uom = tag.uom if tag else ""
    with st.container(border=True):
        st.markdown(f"**{rec['unit']} · {rec['tag']}: {rec['current']:g} → {rec['proposed']:g} {uom}** "
                    f"· batch `{rec['batch_id']}` · `{rec['id']}`")
        c = st.columns(3)
        c[0].metric("Expected yield gain", f"{rec['gain']:+.1%}", f"interval {rec['gain_low']:+.1%} to "
                    f"{rec['gain_high']:+.1%}", delta_color="off", delta_arrow="off")
        c[1].metric("Deviation risk change", f"{rec['risk_change']:+.1%}")
        c[2].metric("Model", rec["model_version"])
        drivers = pl.DataFrame([(f, float(v)) for f, v in json.loads(rec["drivers"])],
                               schema={"feature": pl.String(), "contribution": pl.Float64()}, orient="row")
        if drivers.height:
            charts.show(charts.drivers_chart(drivers))
        limits = f" · PAR {tag.par[0]:g}-{tag.par[1]:g} {uom}, largest step {tag.max_step:g}" if tag and tag.par else ""
        st.caption(f"Proposed {rec['created_ts']:%Y-%m-%d %H:%M} UTC{limits}")
        if may_decide:
            decision_form(rec)


def decision_form(rec: dict) -> None:
    key = f"dec_{rec['id']}"
    with st.form(key):
        st.markdown(f"**Your decision on {rec['id']}**")
        choice = st.radio("Decision", list(actions.DECISIONS), horizontal=True, key=f"{key}_choice")
        value = st.number_input("Modify to (only for Modify)", value=float(rec["proposed"]), format="%.3f",
                                key=f"{key}_value")
        reason, password = ui.sign_fields(key, "Reason (required to modify or reject)", reason_required=False)
        submitted = st.form_submit_button("Sign decision", type="primary")
    if submitted:
        with ui.errors("the decision was not recorded"):
            decision = actions.DECISIONS[choice]
            sig = actions.decide_recommendation(plant, ui.current(), rec["id"], decision, password, reason,
                                                value if decision == "modified" else None)
            st.session_state["cw_flash_rec"] = f"{rec['id']} {decision}: signed by {sig.manifest()}"
            st.rerun()


with ui.errors("reading recommendations"):
    table = plant.recommendations.table()
    pending = table.filter(pl.col("status") == "pending")
    st.subheader(f"Pending ({pending.height})")
    if pending.height == 0:
        st.info("No pending advice.")
    for rec in pending.iter_rows(named=True):
        pending_card(rec)
    st.subheader("Decisions")
    done = table.filter(pl.col("status") != "pending").select(
        "decided_ts", "decided_by", "status", "unit", "tag", "current", "proposed", "applied_value", "reason",
        "model_version", "batch_id", "id", "signature_id")
    if done.height:
        st.dataframe(done, hide_index=True, width="stretch")
    else:
        st.caption("No decisions yet.")
    st.caption("Every decision is an e-signature: the recommendation as shown, the decision and any new value "
               "are bound to it; the audit trail (QA page) holds the signature and the decision.")
