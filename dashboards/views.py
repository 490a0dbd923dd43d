"""Streamlit views the pages share: status grid, unit cards, room table, badges."""

from __future__ import annotations

from datetime import datetime

import altair as alt
import polars as pl
import streamlit as st

from dashboards import predictions, queries as q, ui
from dashboards.charts import ACTION, ALERT

STATUS_COLOURS = {q.OK: "#2e7d32", q.ALERT: ALERT, q.ACTION: ACTION, q.BAD: "#6a1b9a", q.STALE: "#9e9e9e",
                  q.NO_DATA: "#e0e0e0"}
_BADGE = {q.OK: "green", q.ALERT: "orange", q.ACTION: "red", q.BAD: "violet", q.STALE: "gray", q.NO_DATA: "gray"}
_PRIO_BADGE = {"critical": "red", "high": "red", "medium": "orange", "low": "blue"}


def fmt(value: float | None) -> str:
    """A reading as text: three significant digits, thousands separated for large counts."""
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def status_badge(status: str) -> str:
    return f":{_BADGE[status]}-badge[{status}]"


def alarm_badges(counts: dict[str, int]) -> str:
    """Markdown badges, most severe priority first ("no alarms" when there are none)."""
    parts = [f":{_PRIO_BADGE[p]}-badge[{counts[p]} {p}]" for p in q.PRIORITIES if counts.get(p)]
    return " ".join(parts) if parts else ":green-badge[no alarms]"


def _grid_rows(owner: str, readings: tuple[q.Reading, ...]) -> list[tuple[str, str, str, str]]:
    return [(owner, r.short, r.status, f"{fmt(r.value)}") for r in readings]


def status_grid(rows: list[tuple[str, str, str, str]], title: str) -> alt.LayerChart:
    """Key values as coloured cells (owner x tag): green inside limits, amber alert, red action, grey stale."""
    df = pl.DataFrame(rows, schema={"owner": pl.String(), "tag": pl.String(), "status": pl.String(),
                                    "value": pl.String()}, orient="row")
    owners, tags = list(dict.fromkeys(df["owner"])), list(dict.fromkeys(df["tag"]))
    scale = alt.Scale(domain=list(STATUS_COLOURS), range=list(STATUS_COLOURS.values()))
    base = alt.Chart(df).encode(x=alt.X("tag:N", sort=tags, title=None, axis=alt.Axis(orient="top", labelAngle=0)),
                                y=alt.Y("owner:N", sort=owners, title=None))
    cells = base.mark_rect(stroke="white", strokeWidth=2).encode(
        color=alt.Color("status:N", scale=scale, legend=alt.Legend(orient="bottom", title=None)),
        tooltip=["owner:N", "tag:N", "value:N", "status:N"])
    text = base.mark_text(color="white", fontWeight="bold").encode(text="value:N")
    return (cells + text).properties(title=title, height=alt.Step(24))


def unit_grid(units: list[q.UnitView]) -> alt.LayerChart:
    return status_grid([row for u in units for row in _grid_rows(u.unit, u.readings)],
                       "Bioreactors: key values against alert/action limits")


def room_grid(rooms: list[q.RoomView]) -> alt.LayerChart:
    return status_grid([row for r in rooms for row in _grid_rows(f"{r.room} ({r.grade})", r.readings)],
                       "Rooms: particles (Annex 1), pressure, climate")


@st.cache_resource(ttl=60, max_entries=4, show_spinner=False)
def predictor(data: str) -> predictions.Predictor | predictions.Unavailable:
    """The champion models (re-checked every minute, so a promotion shows up without a restart)."""
    return predictions.load(ui._plant(data))


def harvest_forecasts(units: list[q.UnitView], now: datetime) -> dict[str, predictions.Harvest | predictions.Unavailable]:
    """Predicted harvest per running batch, or why there is none."""
    model = predictor(ui.data_key())
    if isinstance(model, predictions.Unavailable):
        return {u.batch_id: model for u in units if u.batch_id}
    return {u.batch_id: _harvest(ui.data_key(), u.batch_id, now) for u in units if u.batch_id}


@st.cache_data(ttl=30, max_entries=64, show_spinner=False)
def _harvest(data: str, batch_id: str, now: datetime) -> predictions.Harvest | predictions.Unavailable:
    model = predictor(data)
    if isinstance(model, predictions.Unavailable):
        return model
    return model.harvest(batch_id, now)


def unit_cards(units: list[q.UnitView], forecasts: dict, columns: int = 4) -> None:
    """One bordered card per unit: batch, phase, culture day, harvest forecast, alarm badges."""
    cols = st.columns(columns)
    for i, u in enumerate(units):
        with cols[i % columns].container(border=True):
            st.markdown(f"**{u.unit}** · {u.room} · {u.kind.replace('_', ' ')} {status_badge(u.status)}")
            if u.batch_id:
                day = f"day **{u.culture_day:.1f}**" if u.culture_day is not None else ""
                st.markdown(f"`{u.batch_id}`  \n{u.recipe} · **{u.phase}** · {day}")
                f = forecasts.get(u.batch_id)
                if isinstance(f, predictions.Harvest):
                    st.markdown(f"Predicted harvest **{fmt(f.mid)}** ({fmt(f.low)}-{fmt(f.high)}) {f.what}")
                elif u.harvest_due is not None:
                    st.caption(f"Harvest due {u.harvest_due:%Y-%m-%d %H:%M} UTC · no yield prediction "
                               "(no model registered)")
            else:
                st.markdown(f"**{u.phase}**" + (" - telemetry without an open batch record" if u.phase == "running"
                                                  else ""))
            st.markdown(alarm_badges(u.alarms))


def rooms_table(rooms: list[q.RoomView]) -> pl.DataFrame:
    """Rooms by grade with their state, key readings, status and alarms."""
    rows = []
    for r in rooms:
        by = {x.short: x for x in r.readings}
        state = "-" if r.in_operation is None else ("in operation" if r.in_operation else "at rest")
        rows.append({"room": r.room, "name": r.name, "grade": r.grade, "state": state,
                     "DP [Pa]": fmt(by["DP"].value) if "DP" in by else "-", "DP setpoint": r.dp_setpoint_pa,
                     ">=0.5 um /m3": fmt(by["P05"].value) if "P05" in by else "-",
                     ">=5.0 um /m3": fmt(by["P50"].value) if "P50" in by else "-",
                     "status": r.status, "alarms": sum(r.alarms.values())})
    return pl.DataFrame(rows)
