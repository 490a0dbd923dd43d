"""Altair charts of the panel: trends against limit bands, prediction intervals, particles, pressure cascade."""

from __future__ import annotations

from typing import Any

import altair as alt
import polars as pl
import streamlit as st

from dashboards.queries import bands
from plant.site import Tag

# Colours carry meaning: red action, amber alert, green PAR, blue process value, grey setpoint.
ACTION, ALERT, PAR, VALUE, SETPOINT = "#c62828", "#ef8f00", "#2e7d32", "#1f77b4", "#616161"
_T = alt.X("ts:T", title="time (UTC)", scale=alt.Scale(type="utc"), axis=alt.Axis(format="%d %b %H:%M"))


def show(chart: alt.TopLevelMixin, where: Any = None, width: str = "stretch") -> None:
    """Draw a chart. The spec is built without Altair's JSON-schema validation, which cost more than the
    rest of a page's server time; the charts here are fixed code, checked by the tests instead."""
    (where or st).vega_lite_chart(chart.to_dict(validate=False), width=width)


def _limit_rules(tag: Tag) -> pl.DataFrame:
    rows = [(k.replace("_", " "), v) for k, v in bands(tag).items() if v is not None and not k.startswith("par")]
    return pl.DataFrame(rows, schema={"limit": pl.String(), "value": pl.Float64()}, orient="row")


def trend_chart(values: pl.DataFrame, tag: Tag, setpoint: pl.DataFrame | None = None, sp_tag: Tag | None = None,
                height: int = 180) -> alt.LayerChart:
    """A tag's trend with its alert (amber) and action (red) limits, and its setpoint's PAR (green band)."""
    title = f"{tag.short} [{tag.uom}]" + (f" - {tag.description}" if tag.description else "")
    y = alt.Y("value:Q", title=tag.uom, scale=alt.Scale(zero=False))
    layers: list[alt.Chart] = []
    par = sp_tag.par if sp_tag is not None else tag.par
    if par is not None:
        band = pl.DataFrame({"low": [par[0]], "high": [par[1]]})
        layers.append(alt.Chart(band).mark_rect(color=PAR, opacity=0.12).encode(
            y="low:Q", y2="high:Q", tooltip=[alt.Tooltip("low:Q", title="PAR low"), alt.Tooltip("high:Q", title="PAR high")]))
    limits = _limit_rules(tag)
    if limits.height:
        colour = alt.Color("limit:N", legend=None, scale=alt.Scale(
            domain=["action low", "alert low", "alert high", "action high"], range=[ACTION, ALERT, ALERT, ACTION]))
        layers.append(alt.Chart(limits).mark_rule(strokeDash=[5, 4]).encode(y="value:Q", color=colour,
                                                                           tooltip=["limit:N", "value:Q"]))
    layers.append(alt.Chart(values).mark_line(color=VALUE, strokeWidth=1.4).encode(
        x=_T, y=y, tooltip=[alt.Tooltip("ts:T", format="%Y-%m-%d %H:%M", title="UTC"), alt.Tooltip("value:Q", format=".3g")]))
    if setpoint is not None and setpoint.height:
        layers.append(alt.Chart(setpoint).mark_line(color=SETPOINT, strokeDash=[2, 2], interpolate="step-after").encode(
            x=_T, y="value:Q", tooltip=[alt.Tooltip("value:Q", title="setpoint")]))
    return alt.layer(*layers).properties(title=title, height=height)


def interval_chart(traj: pl.DataFrame, title: str, y_title: str, height: int = 200) -> alt.LayerChart:
    """A prediction over time: median line and its interval (columns ts, low, mid, high)."""
    area = alt.Chart(traj).mark_area(opacity=0.25, color=VALUE).encode(x=_T, y=alt.Y("low:Q", title=y_title), y2="high:Q")
    line = alt.Chart(traj).mark_line(color=VALUE).encode(
        x=_T, y="mid:Q", tooltip=[alt.Tooltip("ts:T", format="%Y-%m-%d %H:%M"), "low:Q", "mid:Q", "high:Q"])
    return alt.layer(area, line).properties(title=title, height=height)


def risk_chart(risk: pl.DataFrame, threshold: float, height: int = 160) -> alt.LayerChart:
    """Deviation risk (0-1) over time with the alarm threshold (columns ts, risk)."""
    line = alt.Chart(risk).mark_line(color=ALERT).encode(
        x=_T, y=alt.Y("risk:Q", title="risk", scale=alt.Scale(domain=[0, 1])), tooltip=["ts:T", "risk:Q"])
    rule = alt.Chart(pl.DataFrame({"threshold": [threshold]})).mark_rule(color=ACTION, strokeDash=[5, 4]).encode(
        y="threshold:Q")
    return alt.layer(line, rule).properties(title="Deviation risk", height=height)


def drivers_chart(drivers: pl.DataFrame) -> alt.Chart:
    """Top drivers as signed bars (columns feature, contribution)."""
    return alt.Chart(drivers).mark_bar().encode(
        x=alt.X("contribution:Q", title="contribution"), y=alt.Y("feature:N", sort="-x", title=None),
        color=alt.condition("datum.contribution > 0", alt.value(PAR), alt.value(ACTION)),
        tooltip=["feature:N", alt.Tooltip("contribution:Q", format="+.3f")]).properties(height=alt.Step(22))


def offline_chart(samples: pl.DataFrame) -> alt.FacetChart:
    """Offline samples, one small chart per analyte (columns ts, analyte, value, unit)."""
    base = alt.Chart(samples).mark_line(point=True).encode(
        x=_T, y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False)),
        tooltip=["analyte:N", alt.Tooltip("ts:T", format="%Y-%m-%d %H:%M"), "value:Q", "unit:N"])
    return base.properties(width=260, height=130).facet(facet=alt.Facet("analyte:N", title=None), columns=3) \
        .resolve_scale(y="independent")


def particles_chart(values: pl.DataFrame, limits: pl.DataFrame, title: str, height: int = 200) -> alt.LayerChart:
    """Particle counts per m3 (log scale) with the Annex 1 limits (columns ts, room, value; limits: label, value)."""
    line = alt.Chart(values).mark_line(strokeWidth=1.2).encode(
        x=_T, y=alt.Y("value:Q", title="/m3", scale=alt.Scale(type="symlog")), color=alt.Color("room:N", legend=None),
        tooltip=["room:N", alt.Tooltip("ts:T", format="%H:%M"), alt.Tooltip("value:Q", format=",.0f")])
    rules = alt.Chart(limits).mark_rule(strokeDash=[5, 4], color=ACTION).encode(
        y="value:Q", tooltip=["label:N", alt.Tooltip("value:Q", format=",.0f")])
    return alt.layer(line, rules).properties(title=title, height=height)


def cascade_chart(rooms: pl.DataFrame, height: int = 240) -> alt.LayerChart:
    """Pressure cascade: each room's DP against its setpoint, cleanest grade first
    (columns room, grade, dp, setpoint, alert, action)."""
    order = rooms["room"].to_list()
    bars = alt.Chart(rooms).mark_bar(color=VALUE, opacity=0.8).encode(
        x=alt.X("room:N", sort=order, title=None), y=alt.Y("dp:Q", title="DP to reference [Pa]"),
        tooltip=["room:N", "grade:N", alt.Tooltip("dp:Q", format=".1f"), "setpoint:Q", "alert:Q", "action:Q"])
    sp = alt.Chart(rooms).mark_tick(color=SETPOINT, thickness=3, size=36).encode(x=alt.X("room:N", sort=order), y="setpoint:Q")
    action = alt.Chart(rooms).mark_tick(color=ACTION, thickness=2, size=36).encode(x=alt.X("room:N", sort=order), y="action:Q")
    text = alt.Chart(rooms).mark_text(dy=-8).encode(x=alt.X("room:N", sort=order), y="dp:Q", text="grade:N")
    return alt.layer(bars, sp, action, text).properties(height=height)


def load_chart(load: pl.DataFrame, height: int = 160) -> alt.Chart:
    """Alarms annunciated per 10 minutes (columns ts, alarms)."""
    return alt.Chart(load).mark_bar(color=ALERT).encode(x=_T, y=alt.Y("alarms:Q", title="alarms / 10 min"),
                                                        tooltip=["ts:T", "alarms:Q"]).properties(height=height)
