"""Cached reads for the pages: a short TTL keeps live tiles fresh, max_entries keeps memory bounded.

Each function takes the data folder key first (`ui.data_key()`), so two panels on two folders in one
process never share entries. Writes never go through here.
"""

from __future__ import annotations

from datetime import datetime

import polars as pl
import streamlit as st

from dashboards import queries as q
from dashboards.ui import _plant
from plant.records import BatchRecord

TTL_S = 3  # below the live refresh period, so every tick reads new data at most once per process
_LIVE = dict(ttl=TTL_S, max_entries=32, show_spinner=False)
_SLOW = dict(ttl=30, max_entries=64, show_spinner=False)  # history does not change; bounded all the same


@st.cache_data(**_LIVE)
def now(data: str) -> datetime | None:
    return q.plant_now(_plant(data))


@st.cache_data(**_LIVE)
def alarm_states(data: str, now: datetime | None) -> pl.DataFrame:
    return q.alarm_states(_plant(data))


@st.cache_data(**_LIVE)
def snapshot(data: str, now: datetime) -> tuple[list[q.UnitView], list[q.RoomView]]:
    """Every unit and room at `now` (one read of the newest values)."""
    return q.snapshot(_plant(data), now, alarm_states(data, now))


def units(data: str, now: datetime) -> list[q.UnitView]:
    return snapshot(data, now)[0]


def rooms(data: str, now: datetime) -> list[q.RoomView]:
    return snapshot(data, now)[1]


@st.cache_data(**_LIVE)
def trend(data: str, source: str, tags: tuple[str, ...], start: datetime, end: datetime,
          points: int = 360, agg: str = "mean") -> pl.DataFrame:
    return q.trend(_plant(data).source(source), tags, start, end, points, agg)


@st.cache_data(**_SLOW)
def batch_choices(data: str, now: datetime) -> list[tuple[BatchRecord, str]]:
    return q.batch_choices(_plant(data), now)


@st.cache_data(**_LIVE)
def offline(data: str, source: str, batch_id: str) -> pl.DataFrame:
    return q.offline(_plant(data).source(source), batch_id)


@st.cache_data(**_LIVE)
def setpoint_steps(data: str, source: str, tags: tuple[str, ...], start: datetime, end: datetime) -> pl.DataFrame:
    return q.setpoint_steps(_plant(data).source(source), tags, start, end)
