"""Streamlit views the pages share: status grid, unit cards, room table, badges."""

from __future__ import annotations

import threading
import time
from datetime import datetime

import polars as pl
import streamlit as st

from dashboards import charts, predictions, ui
from dashboards import queries as q
from dashboards.charts import ACTION, ALERT

STATUS_COLOURS = {q.OK: "#2e7d32", q.ALERT: ALERT, q.ACTION: ACTION, q.BAD: "#6a1b9a", q.STALE: "#9e9e9e",
                  q.NO_DATA: "#e0e0e0"}
_BADGE = {q.OK: "green", q.ALERT: "orange", q.ACTION: "red", q.BAD: "violet", q.STALE: "gray", q.NO_DATA: "gray"}
Forecast = predictions.Harvest | predictions.Unavailable
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


def _grid(rows: list[tuple[str, str, str, str]], title: str, name: str) -> charts.Spec:
    frame = pl.DataFrame(rows, schema={"owner": pl.String(), "tag": pl.String(), "status": pl.String(),
                                       "value": pl.String()}, orient="row")
    return charts.status_grid(frame, title, STATUS_COLOURS, name)


def unit_grid(units: list[q.UnitView]) -> charts.Spec:
    """Every unit's key values as coloured cells: green inside limits, amber alert, red action, grey stale."""
    return _grid([row for u in units for row in _grid_rows(u.unit, u.readings)],
                 "Bioreactors: key values against alert/action limits", "units")


def room_grid(rooms: list[q.RoomView]) -> charts.Spec:
    """Every room's readings as coloured cells (particles against the grade's Annex 1 limits)."""
    return _grid([row for r in rooms for row in _grid_rows(f"{r.room} ({r.grade})", r.readings)],
                 "Rooms: particles (Annex 1), pressure, climate", "rooms")


MODEL_RECHECK_S = 60.0  # the champion is looked up again this often, so a promotion shows up without a restart
_MODELS: dict[str, tuple[float, predictions.Predictor | predictions.Unavailable]] = {}
_MODELS_LOCK = threading.Lock()


def predictor(data: str) -> predictions.Predictor | predictions.Unavailable:
    """The champion models, loaded once per process and data folder (re-checked every minute). A plain cache
    rather than st.cache_resource: the overview's forecast worker asks for it outside any page run."""
    with _MODELS_LOCK:  # one load at a time: a page asking meanwhile waits for it instead of loading twice
        hit = _MODELS.get(data)
        if hit is not None and time.monotonic() - hit[0] < MODEL_RECHECK_S:
            return hit[1]
        model = predictions.load(ui._plant(data))
        if hit is not None and isinstance(model, predictions.ChampionPredictor) \
                and isinstance(hit[1], predictions.ChampionPredictor) and hit[1].version == model.version:
            model = hit[1]  # the same versions: keep the loaded object (and what it has computed)
        if len(_MODELS) >= 4 and data not in _MODELS:
            _MODELS.pop(next(iter(_MODELS)))
        _MODELS[data] = (time.monotonic(), model)
        return model


def loaded_predictor(data: str) -> predictions.Predictor | predictions.Unavailable | None:
    """The champion models without waiting for a load another thread is doing (None meanwhile): a page shows
    what it can and the predictions once they are there."""
    if not _MODELS_LOCK.acquire(blocking=False):
        return None
    _MODELS_LOCK.release()
    return predictor(data)


PENDING = predictions.Unavailable("computing")  # the tile's prediction is being computed (shown at the next refresh)


class ForecastBoard:
    """Predicted harvests of the running batches, computed off the page run.

    A refresh tick shows the newest finished forecasts and, when the data has moved into a new 10-minute bucket
    (or the running batches or the model changed), asks a worker thread for new ones: no tick waits for a model
    (eight forecasts take about half a second, loading the models from MLflow several seconds). The board holds
    only the batches last asked for, so it does not grow."""

    def __init__(self, data: str) -> None:
        self.data = data
        self.lock = threading.Lock()
        self.key: tuple[datetime, tuple[str, ...]] | None = None  # what `values` answers
        self.values: dict[str, Forecast] = {}
        self.wanted: tuple[datetime, tuple[str, ...]] | None = None
        self.worker: threading.Thread | None = None

    def get(self, batch_ids: list[str], at: datetime) -> dict[str, Forecast]:
        want = (at, tuple(sorted(batch_ids)))
        with self.lock:
            self.wanted = want
            if self.key != want and (self.worker is None or not self.worker.is_alive()):
                self.worker = threading.Thread(target=self._work, name="cellwatch-forecasts", daemon=True)
                self.worker.start()
            return {b: self.values.get(b, PENDING) for b in batch_ids}

    def wait(self, timeout: float) -> bool:
        """Until the worker is done (tests); True when it finished."""
        w = self.worker
        if w is not None:
            w.join(timeout)
        return w is None or not w.is_alive()

    def _work(self) -> None:
        while True:
            with self.lock:
                want = self.wanted
            if want is None:
                return
            at, ids = want
            model = predictor(self.data)
            try:
                if isinstance(model, predictions.Unavailable):
                    got: dict[str, Forecast] = {b: model for b in ids}
                elif hasattr(model, "harvests"):
                    got = model.harvests(list(ids), at)
                else:
                    got = {b: model.harvest(b, at) for b in ids}
            except Exception as exc:  # noqa: BLE001 - a failing model shows as unavailable, the panel goes on
                predictions.log.exception("harvest forecasts failed")
                got = {b: predictions.Unavailable(f"The model failed ({type(exc).__name__})") for b in ids}
            with self.lock:
                self.values, self.key = got, want
                if self.wanted == want:
                    return


@st.cache_resource(max_entries=4, show_spinner=False)
def forecast_board(data: str) -> ForecastBoard:
    return ForecastBoard(data)


@st.cache_resource(max_entries=4, show_spinner=False)
def warm_models(data: str) -> threading.Thread:
    """Load the champion models in the background once per process, from the first page run (the login form):
    importing MLflow and loading the models takes seconds, which no page should wait for after the login."""
    t = threading.Thread(target=predictor, args=(data,), name="cellwatch-warm-models", daemon=True)
    t.start()
    return t


def harvest_forecasts(units: list[q.UnitView], now: datetime) -> dict[str, Forecast]:
    """Predicted harvest per running batch, or why there is none (PENDING while it is being computed)."""
    ids = [u.batch_id for u in units if u.batch_id]
    if not ids:
        return {}
    if not predictions.store_exists(ui._plant(ui.data_key())):  # no store: say so at once, no worker needed
        return {b: predictions.NO_MODEL for b in ids}
    return forecast_board(ui.data_key()).get(ids, model_time(now))


def model_time(now: datetime, every_min: int = 10) -> datetime:
    """`now` rounded down to `every_min` minutes: predictions are recomputed that often, not at every tick."""
    return now.replace(minute=now.minute - now.minute % every_min, second=0, microsecond=0)


@st.cache_data(ttl=600, max_entries=32, show_spinner="Asking the model for the batch's trajectory ...")
def model_outputs(data: str, batch_id: str, at: datetime) -> tuple[object, object, object]:
    """(yield trajectory, risk over time, drivers at `at`) of a batch, each a frame or an Unavailable."""
    model = predictor(data)
    if isinstance(model, predictions.Unavailable):
        return model, model, model
    return model.yield_trajectory(batch_id, at), model.risk(batch_id, at), model.drivers(batch_id, at)


def _no_prediction(f: object) -> str:
    if f is predictions.NO_MODEL:
        return "no model registered"
    return "no champion model" if f is predictions.NO_CHAMPION else "model unavailable"


def unit_card(u: q.UnitView, forecast: object) -> str:
    """A unit's card as one markdown block (one element: the live tile redraws it every few seconds)."""
    lines = [f"**{u.unit}** · {u.room} · {u.kind.replace('_', ' ')} {status_badge(u.status)}"]
    if u.batch_id:
        day = f" · day **{u.culture_day:.1f}**" if u.culture_day is not None else ""
        lines += [f"`{u.batch_id}`", f"{u.recipe} · **{u.phase}**{day}"]
        if isinstance(forecast, predictions.Harvest):
            lines.append(f"Predicted harvest **{fmt(forecast.mid)}** ({fmt(forecast.low)}-{fmt(forecast.high)}) "
                         f"{forecast.what}" + ("" if forecast.applicable else " :orange-badge[outside training data]"))
        elif forecast is PENDING:
            lines.append(":gray[Predicted harvest: computing, shown at the next refresh]")
        if u.harvest_due is not None:
            lines.append(f":gray[Harvest due {u.harvest_due:%Y-%m-%d %H:%M} UTC"
                         + ("]" if isinstance(forecast, predictions.Harvest) or forecast is PENDING
                            else f" · no yield prediction ({_no_prediction(forecast)})]"))
    else:
        lines.append(f"**{u.phase}**" + (" - telemetry without an open batch record" if u.phase == "running" else ""))
    lines.append(alarm_badges(u.alarms))
    return "  \n".join(lines)


def unit_cards(units: list[q.UnitView], forecasts: dict, columns: int = 4) -> None:
    """One bordered card per unit: batch, phase, culture day, harvest forecast, alarm badges."""
    cols = st.columns(columns)
    for i, u in enumerate(units):
        cols[i % columns].container(border=True).markdown(unit_card(u, forecasts.get(u.batch_id)))


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
