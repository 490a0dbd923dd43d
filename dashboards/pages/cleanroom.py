"""Cleanroom: rooms by grade, particle counts against EU GMP Annex 1 limits, the pressure cascade."""

from datetime import timedelta

import polars as pl
import streamlit as st

from dashboards import cached, charts, ui, views
from dashboards import queries as q

ui.guard("cleanroom")
plant = ui.plant()
data = ui.data_key()
st.title("Cleanroom")
WINDOW = timedelta(hours=24)


@st.fragment(run_every=ui.REFRESH_S * 2)
def live() -> None:
    ui.check_idle()
    with ui.errors("reading the rooms"):
        now = cached.now(data)
        if now is None:
            st.info("No telemetry stored yet.")
            return
        rooms = cached.rooms(data, now)
        st.caption(f"Data time {now:%Y-%m-%d %H:%M} UTC")
        st.dataframe(views.rooms_table(rooms), hide_index=True, width="stretch")
        left, right = st.columns([3, 2])
        with right:
            st.subheader("Pressure cascade")
            charts.show(charts.cascade_chart(q.cascade(plant.site, rooms)))
            st.caption("Bars: measured DP to the reference · grey tick: setpoint · red tick: action limit. "
                       "Cleaner grades must hold the higher pressure.")
        with left:
            st.subheader("Particles, last 24 h, against Annex 1")
            peaks = cached.trend(data, "live", q.particle_tags(plant.site), now - WINDOW, now + timedelta(minutes=1),
                                 24, "max")
            st.dataframe(q.particle_summary(plant.site, peaks), hide_index=True, width="stretch", column_config={
                "highest /m3": st.column_config.NumberColumn(format="localized"),
                "% of limit": st.column_config.ProgressColumn(format="%.0f%%", min_value=0, max_value=100)})
        room = st.selectbox("Room", [r.room for r in rooms], key="cr_room",
                            format_func=lambda r: f"{r} (grade {plant.site.rooms[r].grade}) {plant.site.rooms[r].name}")
        tags = (f"{room}.P05", f"{room}.P50")
        values = cached.trend(data, "live", tags, now - WINDOW, now + timedelta(minutes=1), 288)
        cols = st.columns(2)
        for col, size, short in ((cols[0], "0.5", "P05"), (cols[1], "5.0", "P50")):
            frame = values.filter(pl.col("tag") == f"{room}.{short}").with_columns(room=pl.lit(room))
            limits = q.particle_limit_rules(plant.site.rooms[room].grade, size)
            charts.show(charts.particles_chart(frame, limits, f">= {size} um per m3"), col)


live()
