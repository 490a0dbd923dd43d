"""AppTest helpers for the panel tests: log in through the form, open a page, read what the user sees."""

from __future__ import annotations

from pathlib import Path

import panel_scenario as ps
import polars as pl
from streamlit.runtime.pages_manager import PagesManager
from streamlit.testing.v1 import AppTest

APP = Path(__file__).resolve().parents[1] / "dashboards" / "app.py"


class NavigationPages(PagesManager):
    """AppTest resets PagesManager.uses_pages_directory before every run, and because the panel keeps its
    pages in dashboards/pages/, the flag then turns on the legacy MPA v1 mode, which runs a page file
    without the st.navigation router (login, menu, access). The real server clears the flag at the first
    st.navigation call; this does the same for AppTest (patched in by the panel_env fixture)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        PagesManager.uses_pages_directory = False
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


def texts(at: AppTest) -> str:
    """Everything a user reads on the page, as one string."""
    parts = []
    kinds = ("title", "header", "subheader", "markdown", "caption", "info", "warning", "error", "success", "metric")
    for kind in kinds:
        for el in getattr(at, kind):
            parts.append(str(getattr(el, "label", "")) + " " + str(el.value))
    return "\n".join(parts)


def login(username: str, password: str | None = None) -> AppTest:
    """A fresh browser session that logged in through the form (the default page has run)."""
    at = AppTest.from_file(APP, default_timeout=90).run()
    assert not at.exception, [e.value for e in at.exception]
    at.text_input(key="login_user").input(username)
    at.text_input(key="login_secret").input(password or ps.USERS[username][2])
    at.button(key="FormSubmitter:login-Log in").click().run()
    # the login page reruns the app on success; AppTest leaves that rerun to the next run()
    return at.run() if "cw_session" in at.session_state else at


def open_page(at: AppTest, key: str) -> AppTest:
    at.switch_page(f"pages/{key}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def open_tab(at: AppTest, key: str, label: str) -> AppTest:
    """Switch lazy tabs (only the open one runs) as a click on the tab would."""
    at.session_state[key] = label
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def frame(element: object) -> pl.DataFrame:
    """A dataframe element's value as polars (AppTest hands back pandas)."""
    return pl.from_pandas(element.value)  # type: ignore[attr-defined]


def refused(at: AppTest) -> bool:
    return any(e.value.startswith("Refused") for e in at.error)
