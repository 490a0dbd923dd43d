"""Batch: trends against alert/action limits and PAR, offline samples, predicted yield and deviation risk."""

import streamlit as st

from dashboards import batch_view, cached, ui

ui.guard("batch")
st.title("Batch")
data = ui.data_key()

with ui.errors("reading the batch"):
    now = cached.now(data)
    choices = cached.batch_choices(data, now) if now is not None else []
    if not choices:
        st.info("No batches recorded yet.")
        st.stop()
    ids = [b.batch_id for b, _ in choices]
    wanted = st.query_params.get("batch")
    chosen = st.selectbox("Batch", ids, index=ids.index(wanted) if wanted in ids else 0, key="batch_select",
                          format_func=lambda i: batch_view.label(*choices[ids.index(i)], now))
    st.query_params["batch"] = chosen  # a link to this page opens the same batch
    batch, source = choices[ids.index(chosen)]
    batch_view.header(batch, source, now)
    sections = {"Trends": lambda: batch_view.trends(data, batch, source, now),
                "Offline samples": lambda: batch_view.offline(data, batch, source),
                "Predictions": lambda: batch_view.model_outputs(batch, now)}
    for label, tab in ui.lazy_tabs(list(sections), "batch_tab"):
        with tab:
            sections[label]()
