"""QA: deviations (register, detail, lifecycle, PDF), per-batch audit-trail review and sign-off, audit-trail
search with export. Tabs and actions follow the user's permissions."""

import streamlit as st

from dashboards import qa_view, ui

session = ui.guard("qa")
st.title("Quality")
for key in ("cw_flash_qa",):
    if flash := st.session_state.pop(key, None):
        st.success(flash, icon=":material/verified:")

tabs = qa_view.tabs_for(ui.can)
if not tabs:
    st.info(f"Your role ({session.role}) has no quality records to work on.")
    st.stop()
for name, tab in ui.lazy_tabs(tabs, "qa_tab"):
    with tab, ui.errors(f"the {name.lower()} tab"):
        qa_view.TABS[name]()
