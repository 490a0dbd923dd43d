"""The cellwatch panel: login, then the pages of the user's role (`cellwatch panel --data DIR`)."""

import streamlit as st

from dashboards import ui

st.set_page_config(page_title="cellwatch", page_icon=":material/biotech:", layout="wide")
ui.open_or_stop()
if ui.plant().mlflow_db.exists():  # the champion models load while the user logs in
    from dashboards import views

    views.warm_models(ui.data_key())

# Every page's URL is registered in both states, so a link opened before logging in shows the login form
# and then the page itself; the menu is drawn here, listing only the pages of the user's role.
session = ui.touch()
if session is None:
    nav = st.navigation([st.Page("pages/login.py", title="Log in", icon=":material/login:", url_path="login",
                                 default=True)]
                        + [st.Page("pages/login.py", title=p.title, url_path=p.key) for p in ui.PAGES],
                        position="hidden")
else:
    pages = {p.key: st.Page(p.file, title=p.title, icon=p.icon, url_path=p.key, default=p.key == "overview")
             for p in ui.PAGES}
    nav = st.navigation([*pages.values(), st.Page("pages/overview.py", title="Plant overview", url_path="login")],
                        position="hidden")
    with st.sidebar:
        for p in ui.pages_for(session.role):
            st.page_link(pages[p.key])
        st.divider()
        st.markdown(f"**{session.full_name}**  \n{session.username} · role **{session.role}**")
        if st.button("Log out", key="logout", icon=":material/logout:"):
            ui.logout()
            st.rerun()
nav.run()
