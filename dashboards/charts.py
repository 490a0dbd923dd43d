"""Charts of the panel as Vega-Lite specs: trends against limit bands, prediction intervals, particles,
the pressure cascade, status grids.

The specs are written as plain dicts (rendered by st.vega_lite_chart, the engine Altair also targets):
building the same charts through Altair cost 40-300 ms each on the plant's 2-core server, mostly in
its schema machinery, which the 5-second live tiles and the 2-second page target cannot afford
(docs/decisions/0006-panel-charts-and-live-tiles.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl
import streamlit as st

from dashboards.queries import bands
from plant.site import Tag

Spec = dict[str, Any]
# Colours carry meaning: red action, amber alert, green PAR, blue process value, grey setpoint.
ACTION, ALERT, PAR, VALUE, SETPOINT = "#c62828", "#ef8f00", "#2e7d32", "#1f77b4", "#616161"
T = {"field": "ts", "type": "temporal", "title": "time (UTC)", "scale": {"type": "utc"},
     "axis": {"format": "%d %b %H:%M", "labelOverlap": True}}
T_TIP = {"field": "ts", "type": "temporal", "title": "UTC", "timeUnit": "utcyearmonthdatehoursminutes"}


def show(spec: Spec, where: Any = None, width: str = "stretch") -> None:
    """Draw a chart spec in the page (or in a column/container)."""
    (where or st).vega_lite_chart(spec, width=width)


def values(df: pl.DataFrame) -> list[dict[str, Any]]:
    """Rows of an inline dataset: times as UTC ISO strings, NaN as null (JSON has no NaN)."""
    fixes = [pl.col(c).dt.strftime("%Y-%m-%dT%H:%M:%SZ") for c, t in df.schema.items() if isinstance(t, pl.Datetime)]
    fixes += [pl.col(c).fill_nan(None) for c, t in df.schema.items() if t in (pl.Float64, pl.Float32)]
    return df.with_columns(fixes).to_dicts() if fixes else df.to_dicts()


def _q(field: str, title: str | None = None, **extra: Any) -> Spec:
    return {"field": field, "type": "quantitative", **({"title": title} if title is not None else {}), **extra}


def _n(field: str, **extra: Any) -> Spec:
    return {"field": field, "type": "nominal", **extra}


def trend_chart(data: pl.DataFrame, tag: Tag, setpoint: pl.DataFrame | None = None, sp_tag: Tag | None = None,
                height: int = 170) -> Spec:
    """A tag's trend with its alert (amber) and action (red) limits and its setpoint's PAR (green band)."""
    layers: list[Spec] = []
    par = sp_tag.par if sp_tag is not None else tag.par
    if par is not None:
        layers.append({"data": {"values": [{"low": par[0], "high": par[1]}]},
                       "mark": {"type": "rect", "color": PAR, "opacity": 0.12},
                       "encoding": {"y": _q("low"), "y2": {"field": "high"},
                                    "tooltip": [_q("low", "PAR low"), _q("high", "PAR high")]}})
    limits = [{"limit": k.replace("_", " "), "value": v} for k, v in bands(tag).items()
              if v is not None and not k.startswith("par")]
    if limits:
        colour = _n("limit", legend=None, scale={"domain": ["action low", "alert low", "alert high", "action high"],
                                                  "range": [ACTION, ALERT, ALERT, ACTION]})
        layers.append({"data": {"values": limits}, "mark": {"type": "rule", "strokeDash": [5, 4]},
                       "encoding": {"y": _q("value"), "color": colour, "tooltip": [_n("limit"), _q("value")]}})
    layers.append({"data": {"values": values(data.select("ts", "value"))},
                   "mark": {"type": "line", "color": VALUE, "strokeWidth": 1.4},
                   "encoding": {"x": T, "y": _q("value", tag.uom, scale={"zero": False}),
                                "tooltip": [T_TIP, _q("value", format=".4g")]}})
    if setpoint is not None and setpoint.height:
        layers.append({"data": {"values": values(setpoint.select("ts", "value"))},
                       "mark": {"type": "line", "color": SETPOINT, "strokeDash": [2, 2], "interpolate": "step-after"},
                       "encoding": {"x": T, "y": _q("value"), "tooltip": [_q("value", "setpoint")]}})
    title = f"{tag.short} [{tag.uom}]" + (f" - {tag.description}" if tag.description else "")
    return {"title": title, "height": height, "layer": layers}


def stack(panels: list[Spec]) -> Spec:
    """Charts one above the other on one time axis (one view: cheaper to draw than separate charts, and an
    event lines up across tags). Named datasets of the panels move to the top level (the only place for them)."""
    datasets = {k: v for p in panels for k, v in p.get("datasets", {}).items()}
    spec: Spec = {"vconcat": [{**{k: v for k, v in p.items() if k != "datasets"}, "width": "container"}
                              for p in panels], "resolve": {"scale": {"color": "independent"}}}
    return {"datasets": datasets, **spec} if datasets else spec


def status_grid(rows: pl.DataFrame, title: str, colours: dict[str, str], name: str = "grid") -> Spec:
    """Values as coloured cells, owner by tag (columns owner, tag, status, value as text).

    The cells are a named dataset (`name`): Streamlit sends it apart from the spec, so a live tile whose values
    change but whose owners and tags do not keeps its drawn view and only swaps the data (no re-embed)."""
    owners, tags = list(dict.fromkeys(rows["owner"])), list(dict.fromkeys(rows["tag"]))
    colour = _n("status", scale={"domain": list(colours), "range": list(colours.values())},
                legend={"orient": "bottom", "title": None})
    return {"title": title, "datasets": {name: values(rows)}, "data": {"name": name}, "height": {"step": 24},
            "encoding": {"x": _n("tag", sort=tags, title=None, axis={"orient": "top", "labelAngle": 0}),
                         "y": _n("owner", sort=owners, title=None)},
            "layer": [{"mark": {"type": "rect", "stroke": "white", "strokeWidth": 2},
                       "encoding": {"color": colour, "tooltip": [_n("owner"), _n("tag"), _n("value"), _n("status")]}},
                      {"mark": {"type": "text", "color": "white", "fontWeight": "bold"},
                       "encoding": {"text": _n("value")}}]}


def interval_chart(traj: pl.DataFrame, title: str, y_title: str, height: int = 200) -> Spec:
    """A prediction over time: median line and its interval (columns ts, low, mid, high)."""
    return {"title": title, "height": height, "data": {"values": values(traj.select("ts", "low", "mid", "high"))},
            "layer": [{"mark": {"type": "area", "opacity": 0.25, "color": VALUE},
                       "encoding": {"x": T, "y": _q("low", y_title), "y2": {"field": "high"}}},
                      {"mark": {"type": "line", "color": VALUE},
                       "encoding": {"x": T, "y": _q("mid"), "tooltip": [T_TIP, _q("low"), _q("mid"), _q("high")]}}]}


def risk_chart(risk: pl.DataFrame, threshold: float, height: int = 160) -> Spec:
    """Deviation risk (0-1) over time with the alarm threshold (columns ts, risk)."""
    return {"title": "Deviation risk", "height": height,
            "layer": [{"data": {"values": values(risk.select("ts", "risk"))}, "mark": {"type": "line", "color": ALERT},
                       "encoding": {"x": T, "y": _q("risk", "risk", scale={"domain": [0, 1]}),
                                    "tooltip": [T_TIP, _q("risk", format=".2f")]}},
                      {"data": {"values": [{"threshold": threshold}]},
                       "mark": {"type": "rule", "color": ACTION, "strokeDash": [5, 4]},
                       "encoding": {"y": _q("threshold")}}]}


def drivers_chart(drivers: pl.DataFrame) -> Spec:
    """Drivers as signed bars, green raising and red lowering the prediction (columns feature, contribution)."""
    return {"data": {"values": values(drivers.select("feature", "contribution"))}, "height": {"step": 22},
            "mark": {"type": "bar"},
            "encoding": {"x": _q("contribution", "contribution"), "y": _n("feature", sort="-x", title=None),
                         "color": {"condition": {"test": "datum.contribution > 0", "value": PAR}, "value": ACTION},
                         "tooltip": [_n("feature"), _q("contribution", format="+.3f")]}}


def offline_chart(samples: pl.DataFrame) -> Spec:
    """Offline samples, one small chart per analyte (columns ts, analyte, value, unit)."""
    return {"data": {"values": values(samples.select("ts", "analyte", "value", "unit"))},
            "facet": _n("analyte", title=None), "columns": 3, "resolve": {"scale": {"y": "independent"}},
            "spec": {"width": 260, "height": 130, "mark": {"type": "line", "point": True},
                     "encoding": {"x": T, "y": _q("value", None, scale={"zero": False}),
                                  "tooltip": [_n("analyte"), T_TIP, _q("value"), _n("unit")]}}}


def particles_chart(data: pl.DataFrame, limits: pl.DataFrame, title: str, height: int = 200) -> Spec:
    """Particle counts per m3 (symlog scale) with the Annex 1 limits (columns ts, value; limits: label, value)."""
    return {"title": title, "height": height,
            "layer": [{"data": {"values": values(data.select("ts", "value"))},
                       "mark": {"type": "line", "strokeWidth": 1.2, "color": VALUE},
                       "encoding": {"x": T, "y": _q("value", "/m3", scale={"type": "symlog"}),
                                    "tooltip": [T_TIP, _q("value", format=",.0f")]}},
                      {"data": {"values": values(limits)}, "mark": {"type": "rule", "strokeDash": [5, 4],
                                                                    "color": ACTION},
                       "encoding": {"y": _q("value"), "tooltip": [_n("label"), _q("value", format=",.0f")]}}]}


def cascade_chart(rooms: pl.DataFrame, height: int = 240) -> Spec:
    """The pressure cascade, cleanest grade first (columns room, grade, dp, setpoint, alert, action)."""
    x = _n("room", sort=rooms["room"].to_list(), title=None)
    tick = {"type": "tick", "thickness": 3, "size": 36}
    return {"height": height, "data": {"values": values(rooms)}, "encoding": {"x": x},
            "layer": [{"mark": {"type": "bar", "color": VALUE, "opacity": 0.8},
                       "encoding": {"y": _q("dp", "DP to reference [Pa]"),
                                    "tooltip": [_n("room"), _n("grade"), _q("dp", format=".1f"), _q("setpoint"),
                                                _q("alert"), _q("action")]}},
                      {"mark": {**tick, "color": SETPOINT}, "encoding": {"y": _q("setpoint")}},
                      {"mark": {**tick, "color": ACTION, "thickness": 2}, "encoding": {"y": _q("action")}},
                      {"mark": {"type": "text", "dy": -8}, "encoding": {"y": _q("dp"), "text": _n("grade")}}]}


def load_chart(load: pl.DataFrame, height: int = 160) -> Spec:
    """Alarms annunciated per 10 minutes (columns ts, alarms)."""
    return {"height": height, "data": {"values": values(load.select("ts", "alarms"))}, "mark": {"type": "bar",
                                                                                              "color": ALERT},
            "encoding": {"x": T, "y": _q("alarms", "alarms / 10 min"), "tooltip": [T_TIP, _q("alarms")]}}


def psi_chart(table: pl.DataFrame, kinds: Sequence[str]) -> Spec:
    """PSI of each input by unit kind, coloured by verdict (columns unit kind, input, PSI, verdict)."""
    rows = table.drop_nulls("PSI").rename({"unit kind": "kind"}).select("kind", "input", "PSI", "verdict")
    return {"data": {"values": values(rows)}, "facet": {"row": _n("kind", title=None, sort=list(kinds))},
            "spec": {"height": {"step": 18}, "mark": {"type": "bar"},
                     "encoding": {"x": _q("PSI"), "y": _n("input", title=None),
                                  "color": _n("verdict", scale={"domain": ["stable", "watch", "drifted"],
                                                                "range": [PAR, ALERT, ACTION]}),
                                  "tooltip": [_n("kind"), _n("input"), _q("PSI", format=".3f"), _n("verdict")]}}}
