"""Alarms: the live list with ISA-18.2 states, acknowledge and shelve (audited), and the alarm-system KPIs."""

import streamlit as st

from dashboards import actions, alarm_view, cached, ui

session = ui.guard("alarms")
plant = ui.plant()
data = ui.data_key()
st.title("Alarms")
if flash := st.session_state.pop("cw_flash_alarm", None):
    st.success(flash, icon=":material/check:")

live_tab, kpi_tab = st.tabs(["Live list", "KPIs"])


@st.fragment(run_every=ui.REFRESH_S)
def live_list() -> None:
    with ui.errors("reading the alarm journal"):
        now = cached.now(data)
        states = cached.alarm_states(data, now)
        alarm_view.live_list(states, now)


with live_tab:
    live_list()
    allowed = [a for a, perm in alarm_view.ACTIONS.items() if ui.can(perm)]
    if not allowed:
        st.info(f"Your role ({session.role}) may view alarms but not acknowledge or shelve them.",
                icon=":material/lock:")
    else:
        with ui.errors("reading the alarm journal"):
            listed = alarm_view.actionable(cached.alarm_states(data, cached.now(data)))
        if listed:
            with st.form("alarm_action"):
                alarm_id = st.selectbox("Alarm", listed, key="alarm_pick")
                action = st.radio("Action", allowed, horizontal=True, key="alarm_action_kind")
                hours = st.number_input("Shelve for (hours, at most 12)", min_value=0.25, max_value=12.0, value=2.0,
                                        step=0.25, key="alarm_hours")
                reason = st.text_input("Reason", key="alarm_reason")
                go = st.form_submit_button("Apply", type="primary")
            if go:
                with ui.errors("the alarm action was not recorded"):
                    if action == "Acknowledge":
                        ev = actions.ack_alarm(plant, ui.current(), alarm_id, reason)
                    elif action == "Shelve":
                        ev = actions.shelve_alarm(plant, ui.current(), alarm_id, reason, hours)
                    else:
                        ev = actions.unshelve_alarm(plant, ui.current(), alarm_id, reason)
                    cached.alarm_states.clear()
                    st.session_state["cw_flash_alarm"] = f"{alarm_id}: {ev.event.value} → {ev.state.value}"
                    st.rerun()

with kpi_tab:
    with ui.errors("computing the KPIs"):
        alarm_view.kpis(plant, cached.now(data))
