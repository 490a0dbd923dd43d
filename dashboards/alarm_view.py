"""The parts of the Alarms page: live list by ISA-18.2 state, actionable alarms, KPI view."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl
import streamlit as st

from dashboards import charts, queries as q
from dashboards.context import Plant
from plant.alarms.kpi import compute_kpis

ACTIONS = {"Acknowledge": "alarm.ack", "Shelve": "alarm.shelve", "Unshelve": "alarm.shelve"}
STATE_TEXT = {"UNACK": "active, unacknowledged", "ACKED": "active, acknowledged",
              "RTN_UNACK": "returned to normal, unacknowledged", "SHELVED": "shelved"}
KPI_PERIOD = timedelta(days=7)


def live_list(states: pl.DataFrame, now: datetime | None) -> None:
    """Counts per state and the list, unacknowledged and high priority first."""
    listed = q.alarm_list(states)
    counts = dict(listed.group_by("state").len().iter_rows())
    cols = st.columns(4)
    for col, state in zip(cols, ("UNACK", "ACKED", "RTN_UNACK", "SHELVED")):
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
