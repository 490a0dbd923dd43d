"""Streamlit plumbing shared by the pages: the plant, the login session, page access, error display."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import streamlit as st

from dashboards.context import PanelArgs, PanelConfigError, Plant, open_plant, panel_args
from plant.audit_review import ReviewRequired
from plant.deviations import DeviationError
from plant.historian import HistorianError
from plant.roles import AccessDenied, AuthError, SessionExpired
from plant.site import SiteError
from plant.users import Session

log = logging.getLogger("cellwatch.panel")
REFRESH_S = 5.0  # live tiles rerun this often (fragments), without rerunning the page
_SESSION = "cw_session"
ALL = ("operator", "engineer", "qa", "data_scientist", "admin")


@dataclass(frozen=True, slots=True)
class PageSpec:
    """A page of the panel and the roles that see it (actions inside are checked by permission)."""

    key: str
    file: str
    title: str
    icon: str
    roles: tuple[str, ...]


PAGES = (
    PageSpec("overview", "pages/overview.py", "Plant overview", ":material/factory:", ALL),
    PageSpec("batch", "pages/batch.py", "Batch", ":material/science:",
             ("operator", "engineer", "qa", "data_scientist")),
    PageSpec("recommendations", "pages/recommendations.py", "Recommendations", ":material/tips_and_updates:",
             ("operator", "engineer", "qa", "data_scientist")),
    PageSpec("alarms", "pages/alarms.py", "Alarms", ":material/notifications_active:", ("operator", "engineer", "qa")),
    PageSpec("cleanroom", "pages/cleanroom.py", "Cleanroom", ":material/air:", ("operator", "engineer", "qa")),
    PageSpec("qa", "pages/qa.py", "QA", ":material/verified:", ALL),
    PageSpec("models", "pages/models.py", "Models", ":material/model_training:", ("data_scientist", "qa")),
)


def pages_for(role: str) -> list[PageSpec]:
    """The pages a role sees, in menu order."""
    return [p for p in PAGES if role in p.roles]


# ------------------------------------------------------------------------------------------ the plant

@st.cache_resource(show_spinner=False, max_entries=4)
def _plant(key: str) -> Plant:
    return open_plant(PanelArgs.parse(key))


def plant() -> Plant:
    """The stores of the data folder this panel serves (opened once per process)."""
    return _plant(data_key())


def open_or_stop() -> Plant:
    """The plant, or a clear message and a stopped page when the data folder cannot be opened."""
    try:
        return plant()
    except Exception as exc:  # noqa: BLE001 - shown by errors(); nothing else can run without the stores
        with errors("cannot open the plant data"):
            raise exc
        st.stop()
        raise  # unreachable: st.stop raises


def data_key() -> str:
    """The cache key of this panel's stores (cached queries take it as their first argument)."""
    return panel_args(sys.argv[1:]).key()


# ------------------------------------------------------------------------------------------ errors

# Expected refusals and input problems: their message is written for the user.
_EXPECTED = (AccessDenied, AuthError, ReviewRequired, DeviationError, PanelConfigError, SiteError, HistorianError,
             ValueError, KeyError)


def message(exc: BaseException) -> str:
    """The user-facing text of an error (a KeyError's repr quotes are dropped)."""
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return str(text).strip() or type(exc).__name__


@contextmanager
def errors(what: str = "") -> Iterator[None]:
    """Show an error as a clear message, never a traceback; refusals read as refusals."""
    try:
        yield
    except (AccessDenied, AuthError, ReviewRequired) as exc:
        st.error(f"Refused: {message(exc)}", icon=":material/block:")
    except _EXPECTED as exc:
        st.error(f"{what + ': ' if what else ''}{message(exc)}", icon=":material/error:")
    except Exception as exc:  # noqa: BLE001 - the panel keeps running; the server log has the traceback
        log.exception("panel error%s", f" ({what})" if what else "")
        st.error(f"Something went wrong{' ' + what if what else ''}: {type(exc).__name__}: {message(exc)}. "
                 "The details are in the server log.", icon=":material/error:")


# ------------------------------------------------------------------------------------------ sessions

def session() -> Session | None:
    """The logged-in session of this browser tab, if any."""
    return st.session_state.get(_SESSION)


def login(username: str, secret: str) -> Session:
    """Authenticate against the plant's users (failures are recorded there) and keep the session."""
    s = plant().users.authenticate(username.strip(), secret)
    st.session_state[_SESSION] = s
    return s


def logout() -> None:
    s = session()
    if s is not None:
        plant().users.logout(s)
    st.session_state.pop(_SESSION, None)


def touch() -> Session | None:
    """Restart the idle timer; an expired session is ended with a message on the login page."""
    s = session()
    if s is None:
        return None
    try:
        s = plant().users.touch(s)
    except SessionExpired as exc:
        st.session_state.pop(_SESSION, None)
        st.session_state["cw_notice"] = str(exc)
        return None
    st.session_state[_SESSION] = s
    return s


def check_idle() -> None:
    """In a live tile: ticks are not activity, so once the idle timeout passed the whole page reruns (to login)."""
    s = session()
    if s is not None and datetime.now(timezone.utc) >= s.expires_ts:
        st.rerun(scope="app")


def current() -> Session:
    """The session a page runs for; a page reached without one stops with a message."""
    s = session()
    if s is None:
        st.warning("Log in first.")
        st.stop()
    return s  # type: ignore[return-value]


def can(permission: str) -> bool:
    """Whether the logged-in user may do `permission` now (role and account state from the database)."""
    s = session()
    return s is not None and plant().users.allowed(s.username, permission)


def guard(page_key: str) -> Session:
    """Stop a page that the user's role does not see (reached by URL or an old link)."""
    s = current()
    spec = next(p for p in PAGES if p.key == page_key)
    if s.role not in spec.roles:
        st.error(f"Refused: the {spec.title} page is not available to role {s.role}.", icon=":material/block:")
        st.stop()
    return s


def lazy_tabs(labels: Sequence[str], key: str) -> list[tuple[str, Any]]:
    """Tabs whose content runs only when shown: (label, container) of the open tab (switching reruns)."""
    tabs = st.tabs(list(labels), key=key, on_change="rerun")
    return [(label, tab) for label, tab in zip(labels, tabs, strict=True) if tab.open is not False]


def sign_fields(key: str, reason_label: str = "Reason", reason_required: bool = True) -> tuple[str, str]:
    """Reason and password inputs of an e-signature, inside a form (the signer is the logged-in user)."""
    s = current()
    reason = st.text_input(reason_label + ("" if reason_required else " (optional)"), key=f"{key}_reason")
    password = st.text_input(f"Password of {s.full_name} ({s.username}) to sign", type="password",
                             key=f"{key}_pw")
    st.caption("Signing re-authenticates you; the signature (name, meaning, time) is bound to the record and "
               "goes on the audit trail.")
    return reason, password
