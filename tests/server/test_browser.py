"""The dashboard in a real browser: headless Chromium (Debian's, driven by Playwright)
against a real uvicorn server with a token. It gives the token when asked, starts a run
that waits for input, answers it through the form and sees it finish. Screenshots go to
$PITON_ARTIFACTS (default <repo>/.artifacts): dashboard.png (the run page),
dashboard-runs.png (the runs table).

Skipped when Chromium or Playwright is missing, unless PITON_REQUIRE_SERVICES=1 (CI),
which makes that a failure. Only the browser binary is needed: no `playwright install`.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from test_http import TOKEN, free_port

from piton import Context, Event, StartEvent, StopEvent, Workflow, step
from piton.server import create_app

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("PITON_CHROMIUM", "/usr/bin/chromium")
TIMEOUT = 10_000  # ms, for each wait on the page


class Question(StartEvent):
    text: str


class Reply(Event):
    text: str


class Note(Event):
    text: str


class Helpdesk(Workflow):
    """Asks a person, then answers with the question and the reply."""

    @step
    async def ask(self, ev: Question, ctx: Context) -> StopEvent:
        ctx.write_event_to_stream(Note(text=f"asked: {ev.text}"))
        reply = await ctx.wait_for_event(Reply)
        ctx.write_event_to_stream(Note(text=f"got: {reply.text}"))
        return StopEvent(result=f"{ev.text} {reply.text}")


def _need(what: str) -> None:
    message = f"{what}; the browser test needs Debian's chromium and the playwright package"
    if os.environ.get("PITON_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{message} (PITON_REQUIRE_SERVICES=1)")
    pytest.skip(message)


@pytest.fixture
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need("playwright is not installed")
    if not os.access(CHROMIUM, os.X_OK):
        _need(f"no Chromium at {CHROMIUM}")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def base(tmp_path: Path) -> Iterator[str]:
    app = create_app(f"sqlite:///{tmp_path / 'runs.db'}", [Helpdesk()], TOKEN)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def _artifacts(tmp_path: Path, *names: str) -> None:
    out = Path(os.environ.get("PITON_ARTIFACTS") or REPO / ".artifacts")
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(tmp_path / name, out / name)


def test_answer_a_waiting_run_through_the_dashboard(
    browser: Any, base: str, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(  # a CSP violation, say; the 401s before the token are expected
        "console",
        lambda m: errors.append(m.text) if m.type == "error" and "401" not in m.text else None,
    )
    page.set_default_timeout(TIMEOUT)
    try:
        page.goto(f"{base}/")
        # the page loads without the token; its first /api call gets 401 and asks for it
        expect(page.locator("#token-form")).to_be_visible()
        expect(page.get_by_test_id("message")).to_contain_text("token")
        page.fill("#token-input", TOKEN)
        page.click("#token-save")

        expect(page.locator("#start-workflow")).to_have_value("Helpdesk")
        expect(page.locator("#start-input")).to_have_value('{\n  "text": ""\n}')
        page.fill("#start-input", '{"text": "ship it?"}')
        page.fill("#start-run-id", "desk-1")
        # the first read of the event stream is cut after event 0 (as by a proxy): the
        # page must resume with Last-Event-ID and miss nothing, repeat nothing
        resumed_from: list[str | None] = []
        first_event = {"type": "Note", "data": {"text": "asked: ship it?"}}

        def cut_first_stream(route: Any) -> None:
            if route.request.method != "GET":
                route.continue_()
                return
            resumed_from.append(route.request.headers.get("last-event-id"))
            if len(resumed_from) > 1:
                route.continue_()
                return
            route.fulfill(
                status=200,
                headers={"Content-Type": "text/event-stream"},
                body=f"id: 0\nevent: Note\ndata: {json.dumps(first_event)}\n\n",
            )

        page.route("**/api/runs/desk-1/events", cut_first_stream)
        page.click("#start-submit")

        page.wait_for_url("**/#/runs/desk-1")
        status = page.get_by_test_id("run-status")
        expect(status).to_have_text("parked")
        expect(page.get_by_test_id("waiting-item")).to_contain_text("waits for Reply")
        expect(page.locator("#answer-type")).to_have_value("Reply")
        expect(page.locator("#events li").first).to_contain_text("asked: ship it?")
        expect(page.locator("[data-testid=graph-svg] g.step.waiting")).to_have_count(1)

        page.screenshot(path=str(tmp_path / "dashboard-waiting.png"), full_page=True)
        page.fill("#answer-data", '{"text": "yes"}')
        page.click("#answer-send")
        expect(status).to_have_text("completed")
        expect(page.get_by_test_id("run-result")).to_have_text('"ship it? yes"')
        expect(page.locator("#events li").last).to_contain_text("StopEvent")
        expect(page.get_by_test_id("events-status")).to_contain_text("ended")
        events = page.get_by_test_id("event")
        assert [events.nth(i).get_attribute("data-event-id") for i in range(3)] == ["0", "1", "2"]
        expect(events).to_have_count(3)
        assert resumed_from[:2] == [None, "0"], resumed_from
        expect(page.locator("#answer-form")).to_have_count(0)
        expect(page.get_by_test_id("cancel-run")).to_be_hidden()
        last_entry = page.get_by_test_id("timeline-row").last
        expect(last_entry).to_contain_text("done -> StopEvent")
        expect(last_entry).to_contain_text("ask")  # the step's name
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

        page.click("text=← all runs")
        row = page.locator("tr[data-run-id='desk-1']")
        expect(row).to_contain_text("completed")
        page.select_option("#filter-status", "parked")
        expect(row).to_have_count(0)
        page.select_option("#filter-status", "completed")
        expect(row).to_have_count(1)
        page.screenshot(path=str(tmp_path / "dashboard-runs.png"), full_page=True)

        # another run, its id made by the server, cancelled with the button (which asks)
        page.select_option("#filter-status", "")
        page.fill("#start-input", '{"text": "never mind"}')
        page.click("#start-submit")
        page.wait_for_url("**/#/runs/*")
        assert "desk-1" not in page.url
        expect(status).to_have_text("parked")
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#cancel-run")
        expect(status).to_have_text("cancelled")
        expect(page.get_by_test_id("cancel-run")).to_be_hidden()
    finally:
        if (tmp_path / "dashboard.png").exists():
            _artifacts(tmp_path, *(p.name for p in tmp_path.glob("*.png")))
        page.close()
    assert errors == [], errors
