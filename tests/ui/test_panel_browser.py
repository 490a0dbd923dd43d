"""End to end in a real browser: the real app (`streamlit run`), headless Chromium driven by Playwright.

An operator logs in, opens a batch and accepts a recommendation with an e-signature; QA finds that
decision in the audit trail. The screenshots taken on the way illustrate the role guides (docs/img/).
"""

from __future__ import annotations

import re
import socket
from datetime import timedelta
from pathlib import Path

import panel_scenario as ps
import pytest

from dashboards import start_panel, wait_ready

IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
pytestmark = pytest.mark.usefixtures("panel_env")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def panel_url(panel_scenario, tmp_path_factory):
    """The real panel on a free port, started as `cellwatch panel` starts it."""
    port = _free_port()
    log = tmp_path_factory.mktemp("panel-log") / "panel.log"
    proc = start_panel(panel_scenario.data, port, log=log)
    try:
        wait_ready(port, timeout_s=90, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except Exception:  # noqa: BLE001 - a hung server must not outlive the test
            proc.kill()
            proc.wait()
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]


def _settle(page) -> None:
    page.wait_for_selector(IDLE, timeout=60_000)


def _shot(page, name: str) -> None:
    IMG.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(800)  # charts finish drawing after the script run
    page.screenshot(path=str(IMG / f"{name}.png"))


def _login(page, url: str, user: str) -> None:
    page.goto(url + "/", wait_until="domcontentloaded")
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password", exact=True).fill(ps.USERS[user][2])
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("heading", name="Plant overview").wait_for(timeout=60_000)
    _settle(page)


def _go(page, link: str, heading: str) -> None:
    page.get_by_role("link", name=link).click()
    page.get_by_role("heading", name=heading).wait_for(timeout=60_000)
    _settle(page)


def _logout(page) -> None:
    page.get_by_role("button", name="Log out").click()
    page.get_by_label("User name").wait_for(timeout=60_000)


def test_operator_accepts_advice_and_qa_finds_the_signed_decision(browser, panel_url, panel_plant, panel_scenario):
    unit = "BR04"  # its temperature excursion shows in the screenshots
    batch = panel_scenario.running[unit]
    rec = ps.recommendation(batch, unit, panel_scenario.now + timedelta(minutes=5), 37.5)
    [rec_id] = panel_plant.recommendations.add([rec])

    page = browser.new_page(viewport={"width": 1440, "height": 1300})
    page.goto(panel_url + "/", wait_until="domcontentloaded")
    page.get_by_label("User name").wait_for(timeout=60_000)
    _shot(page, "login")

    # the operator: overview (live), a batch, the recommendation accepted with an e-signature
    _login(page, panel_url, "olga")
    caption = page.get_by_text(re.compile(r"updates every 5 s \(last"))
    first = caption.inner_text()
    page.wait_for_function("t => !document.body.innerText.includes(t)", arg=first, timeout=30_000)  # it ticked
    assert page.get_by_role("heading", name="Plant overview").count() == 1  # without a page reload
    _shot(page, "operator-overview")

    _go(page, "Batch", "Batch")
    page.get_by_role("combobox", name="Batch").click()
    page.get_by_role("option", name=re.compile(re.escape(batch))).click()
    page.wait_for_url(re.compile(f"/batch\\?batch={re.escape(batch)}$"), timeout=60_000)  # links to the batch shown
    _settle(page)
    assert page.get_by_role("combobox", name="Batch").input_value().startswith(f"{unit} · {batch}")
    _shot(page, "operator-batch")

    _go(page, "Recommendations", "Recommendations")
    card = page.locator('[data-testid="stForm"]').filter(has_text=f"Your decision on {rec_id}")
    card.get_by_label("Password of Olga Operator (olga) to sign").fill(ps.USERS["olga"][2])
    card.scroll_into_view_if_needed()
    _shot(page, "operator-recommendation")
    card.get_by_role("button", name="Sign decision").click()
    page.get_by_text(f"{rec_id} accepted: signed by Olga Operator (olga) - accepted").wait_for(timeout=60_000)
    _settle(page)
    assert panel_plant.recommendations.get(rec_id)[1] == "accepted"
    _go(page, "Alarms", "Alarms")
    _shot(page, "operator-alarms")
    _go(page, "Cleanroom", "Cleanroom")
    _shot(page, "operator-cleanroom")
    _logout(page)

    # QA: the decision and its signature on the audit trail
    _login(page, panel_url, "quinn")
    _go(page, "QA", "Quality")
    _shot(page, "qa-deviations")
    page.get_by_role("tab", name="Audit trail").click()
    search = page.get_by_label("Search (any field)")
    search.fill(rec_id)
    search.press("Enter")
    page.get_by_text("2 matching entries").wait_for(timeout=60_000)
    _settle(page)
    _shot(page, "qa-audit-trail")
    entries = panel_plant.audit.entries(entity="recommendation", entity_id=rec_id)
    assert entries["action"].to_list() == ["sign", "decide"] and set(entries["actor"]) == {"olga"}
    page.get_by_role("tab", name="Batch review").click()
    _shot(page, "qa-batch-review")
    _logout(page)

    # the data scientist: the Models page (empty until a model is trained, or the registry)
    _login(page, panel_url, "dana")
    _go(page, "Models", "Models")
    _shot(page, "data-scientist-models")
    page.close()
