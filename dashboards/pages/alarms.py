"""Alarms: the live list with ISA-18.2 states, acknowledge and shelve (audited), and the alarm-system KPIs."""

import streamlit as st

from dashboards import alarm_view, cached, ui

session = ui.guard("alarms")
plant = ui.plant()
data = ui.data_key()
st.title("Alarms")
if flash := st.session_state.pop("cw_flash_alarm", None):
    st.success(flash, icon=":material/check:")


@st.fragment(run_every=ui.REFRESH_S)
def live_list() -> None:
    ui.check_idle()
    with ui.errors("reading the alarm journal"):
        now = cached.now(data)
        alarm_view.live_list(cached.alarm_states(data, now), now)


for label, tab in ui.lazy_tabs(["Live list", "KPIs"], "alarm_tab"):
    with tab:
        if label == "Live list":
            live_list()
            alarm_view.action_form(plant, data, session)  # outside the fragment: a tick must not reset it
        else:
            with ui.errors("computing the KPIs"):
                alarm_view.kpis(plant, cached.now(data))
