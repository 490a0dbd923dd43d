"""Plant overview: every unit (batch, phase, culture day, key values against limits, alarms, predicted
harvest) and every room (grade, state, status); refreshes itself every few seconds."""

from datetime import datetime, timezone

import streamlit as st

from dashboards import cached, charts, ui, views

ui.guard("overview")
st.title("Plant overview")
data = ui.data_key()


@st.fragment(run_every=ui.REFRESH_S)
def live() -> None:
    ui.check_idle()
    with ui.errors("reading the plant"):
        now = cached.now(data)
        if now is None:
            st.info("No telemetry stored yet: start the plant or its connectors, or generate a history "
                    "(`cellwatch simulate`).")
            return
        units, rooms = cached.units(data, now), cached.rooms(data, now)
        st.caption(f"Data time {now:%Y-%m-%d %H:%M} UTC · updates every {ui.REFRESH_S:g} s "
                   f"(last {datetime.now(timezone.utc):%H:%M:%S} UTC)")
        charts.show(charts.stack([views.unit_grid(units), views.room_grid(rooms)]))
        views.unit_cards(units, views.harvest_forecasts(units, now))
        st.subheader("Rooms")
        st.dataframe(views.rooms_table(rooms), hide_index=True, width="stretch")


live()
