"""Log in with a local account (or, where configured, an ID token from the site's identity provider)."""

import streamlit as st

from dashboards import ui

plant = ui.plant()
st.title("cellwatch")
st.caption(f"{plant.site.info.name} · process monitoring for cell-therapy manufacturing")
if notice := st.session_state.pop("cw_notice", None):
    st.info(notice)

with st.form("login"):
    username = st.text_input("User name", key="login_user")
    if plant.uses_oidc:  # the IdP's browser flow hands the panel an ID token; roles stay local
        st.caption(f"Sign-in through the identity provider {plant.users.identity.issuer}: "  # type: ignore[attr-defined]
                   "paste the ID token it issued.")
        secret = st.text_input("ID token", type="password", key="login_secret")
    else:
        secret = st.text_input("Password", type="password", key="login_secret")
    submitted = st.form_submit_button("Log in", type="primary")

if submitted:
    if not username.strip() or not secret:
        st.error("Enter your user name and " + ("ID token." if plant.uses_oidc else "password."))
    else:
        with ui.errors():
            ui.login(username, secret)
            st.rerun()
