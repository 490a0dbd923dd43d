"""The cellwatch panel: login, then the pages of the user's role (`cellwatch panel --data DIR`)."""

import streamlit as st

from dashboards import ui

st.set_page_config(page_title="cellwatch", page_icon=":material/biotech:", layout="wide")
ui.open_or_stop()

session = ui.touch()
if session is None:
    nav = st.navigation([st.Page("pages/login.py", title="Log in", icon=":material/login:", url_path="login")],
                        position="hidden")
else:
    nav = st.navigation([st.Page(p.file, title=p.title, icon=p.icon, url_path=p.key) for p in ui.pages_for(session.role)])
    with st.sidebar:
        st.markdown(f"**{session.full_name}**  \n{session.username} · role **{session.role}**")
        if st.button("Log out", key="logout", icon=":material/logout:"):
            ui.logout()
            st.rerun()
nav.run()
