"""The parts of the Batch page: header, live trends with limit bands, offline samples, model outputs."""

from __future__ import annotations

from datetime import datetime

import polars as pl
import streamlit as st

from dashboards import cached, charts, predictions, ui, views
from dashboards import queries as q
from plant.records import BatchRecord


def label(b: BatchRecord, source: str, now: datetime | None) -> str:
    """How a batch reads in the picker: unit, id, and running day or end (and "history" if it is from there)."""
    if b.end_ts is None and now is not None and source == "live":
        return f"{b.unit} · {b.batch_id} · running, day {(now - b.start_ts).total_seconds() / 86400:.1f}"
    end = f"{b.end_ts:%Y-%m-%d}" if b.end_ts else "-"
    return (f"{b.unit} · {b.batch_id} · {b.status} {end}" + (f" · {b.disposition}" if b.disposition else "")
            + (" · history" if source == "history" else ""))


def header(b: BatchRecord, source: str, now: datetime | None) -> None:
    cols = st.columns(4)
    cols[0].metric("Unit", b.unit)
    cols[1].metric("Status", b.status)
    ref = b.end_ts or now or b.start_ts
    cols[2].metric("Culture day", f"{(ref - b.start_ts).total_seconds() / 86400:.1f}")
    cols[3].metric("Disposition", b.disposition or "-")
    about = [f"recipe {b.recipe}", f"started {b.start_ts:%Y-%m-%d %H:%M} UTC",
             f"planned end {b.planned_end_ts:%Y-%m-%d %H:%M} UTC"]
    about += [b.kind.replace("_", " ")] if b.kind != "production" else []
    about += ["from the plant history"] if source == "history" else []
    st.caption(" · ".join(about))


def trends(data: str, b: BatchRecord, source: str, now: datetime | None) -> None:
    """Key tags of the batch's unit against their limits; a running batch's trends follow the data."""
    running = b.end_ts is None and source == "live"

    @st.fragment(run_every=ui.REFRESH_S * 6 if running else None)
    def draw() -> None:
        ui.check_idle()
        with ui.errors("reading the trends"):
            at = cached.now(data) if running else now
            start, end = q.batch_window(b, at or b.start_ts)
            site = ui.plant().site
            tags = q.key_tags(site, b.unit)
            sps = {t.controls: t for t in site.controllable(b.unit) if t.controls}
            values = cached.trend(data, source, tuple(t.name for t in tags), start, end)
            sp_names = tuple(s.name for s in sps.values())
            steps = cached.setpoint_steps(data, source, sp_names, start, end) if sps else None
            panels = []
            for tag in tags:
                sp = sps.get(tag.name)
                sp_frame = steps.filter(pl.col("tag") == sp.name) if sp is not None and steps is not None else None
                panels.append(charts.trend_chart(values.filter(pl.col("tag") == tag.name), tag, sp_frame, sp, 120))
            charts.show(charts.stack(panels))
            st.caption("Red dashed: action limits · amber dashed: alert limits · green band: proven acceptable "
                       "range of the setpoint · grey steps: setpoint")
    draw()


def offline(data: str, b: BatchRecord, source: str) -> None:
    samples = cached.offline(data, source, b.batch_id)
    if samples.height == 0:
        st.info("No offline samples recorded for this batch yet (results arrive from the lab and the "
                "batch record).")
        return
    charts.show(charts.offline_chart(samples), width="content")
    st.dataframe(samples, hide_index=True, width="stretch")


def model_outputs(b: BatchRecord, now: datetime | None) -> None:
    """Predicted yield with its interval, deviation risk over time and the top drivers now (while the models are
    still loading in the background, a note that reruns the page once they are there)."""
    model = views.loaded_predictor(ui.data_key())
    if model is None:
        @st.fragment(run_every=2.0)
        def wait() -> None:
            if views.loaded_predictor(ui.data_key()) is not None:
                st.rerun(scope="app")
            st.info("The champion models are loading; the predictions show here once they are ready.",
                    icon=":material/hourglass_top:")
        wait()
        return
    if isinstance(model, predictions.Unavailable):
        st.info(model.why)
        return
    at = views.model_time(b.end_ts or now or b.start_ts)
    with ui.errors("asking the model"):
        traj, risk, drivers = views.model_outputs(ui.data_key(), b.batch_id, at)
        if isinstance(traj, predictions.Unavailable):
            st.info(f"Yield: {traj.why}")
        else:
            charts.show(charts.interval_chart(traj, f"Predicted harvest yield, viable cells ({model.version})",
                                              "viable cells"))
        if isinstance(risk, predictions.Unavailable):
            st.info(f"Deviation risk: {risk.why}")
        else:
            charts.show(charts.risk_chart(risk, model.threshold))
        if isinstance(drivers, predictions.Unavailable):
            st.info(f"Drivers: {drivers.why}")
        else:
            st.subheader("Top drivers now")
            charts.show(charts.drivers_chart(drivers.head(8)))

