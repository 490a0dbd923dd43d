"""The parts of the Alarms page: live list by ISA-18.2 state, actionable alarms, KPI view."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl
import streamlit as st

from dashboards import actions, cached, charts, ui
from dashboards import queries as q
from dashboards.context import Plant
from plant.alarms.kpi import compute_kpis
from plant.users import Session

ACTIONS = {"Acknowledge": "alarm.ack", "Shelve": "alarm.shelve", "Unshelve": "alarm.shelve"}
STATE_TEXT = {"UNACK": "active, unacknowledged", "ACKED": "active, acknowledged",
              "RTN_UNACK": "returned to normal, unacknowledged", "SHELVED": "shelved"}
KPI_PERIOD = timedelta(days=7)


def live_list(states: pl.DataFrame, now: datetime | None) -> None:
    """Counts per state and the list, unacknowledged and high priority first."""
    listed = q.alarm_list(states)
    counts = dict(listed.group_by("state").len().iter_rows())
    cols = st.columns(4)
    for col, state in zip(cols, ("UNACK", "ACKED", "RTN_UNACK", "SHELVED"), strict=True):
        col.metric(STATE_TEXT[state], counts.get(state, 0))
    if listed.height == 0:
        st.success("No alarms on the list.")
        return
    st.dataframe(listed, hide_index=True, width="stretch",
                 column_config={"ts": st.column_config.DatetimeColumn("since (UTC)", format="YYYY-MM-DD HH:mm"),
                                "value": st.column_config.NumberColumn(format="%.4g"),
                                "limit": st.column_config.NumberColumn(format="%.4g")})
    if now is not None:
        st.caption(f"Data time {now:%Y-%m-%d %H:%M} UTC · states: UNACK active unacknowledged, ACKED active "
                   "acknowledged, RTN_UNACK cleared but not acknowledged, SHELVED hidden until its expiry")


def actionable(states: pl.DataFrame) -> list[str]:
    """Alarm ids an operator can act on (every alarm on the list)."""
    return q.alarm_list(states)["alarm_id"].to_list()


def action_form(plant: Plant, data: str, session: Session) -> None:
    """Acknowledge, shelve or unshelve an alarm on the list, with a reason (the actions the role allows)."""
    allowed = [a for a, perm in ACTIONS.items() if ui.can(perm)]
    if not allowed:
        st.info(f"Your role ({session.role}) may view alarms but not acknowledge or shelve them.",
                icon=":material/lock:")
        return
    with ui.errors("reading the alarm journal"):
        listed = actionable(cached.alarm_states(data, cached.now(data)))
    if not listed:
        return
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


def kpis(plant: Plant, now: datetime | None) -> None:
    """ISA-18.2 / EEMUA 191 KPIs over the last week of data time, the alarm load and the bad actors."""
    if now is None:
        st.info("No telemetry yet.")
        return
    start = now - KPI_PERIOD
    journal = plant.journal.read(start=start, end=now + timedelta(microseconds=1))
    k = compute_kpis(journal, 1, start, now + timedelta(microseconds=1))
    st.caption(f"Last {KPI_PERIOD.days} days of data, one operator console")
    st.dataframe(pl.DataFrame(k.rows(), schema=["KPI", "value", "target (ISA-18.2 / EEMUA 191)"], orient="row"),
                 hide_index=True, width="stretch")
    ann = journal.filter(pl.col("annunciated"))
    if ann.height:
        load = ann.with_columns(pl.col("ts").dt.truncate("10m")).group_by("ts").agg(alarms=pl.len()).sort("ts")
        charts.show(charts.load_chart(load))
    if k.top:
        st.subheader("Most frequent alarms")
        st.dataframe(pl.DataFrame(list(k.top), schema=["alarm", "count"], orient="row"), hide_index=True)
