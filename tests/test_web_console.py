"""The web console at /ui, in a real browser (Chromium + Playwright) against a real server."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser import browser, screenshot  # noqa: F401  (the fixture)
from tests.conftest import running_server

SERVICES = {
    "echo": {"type": "workflow", "source": "examples.echo:workflow"},
    "stats": {"type": "workflow", "source": "examples.pipeline:build"},
    "approval": {
        "type": "workflow",
        "source": "examples.approval:workflow",
        "human_service": "approvers",
    },
    "approvers": {"type": "human", "human_input_prompt": "Approval needed: {input_str}"},
}
XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server({"services": SERVICES}, tmp_path_factory.mktemp("ui")) as running:
        yield running.base_url


@pytest.fixture
def page(browser) -> Iterator[Page]:  # noqa: F811
    context = browser.new_context()
    opened = context.new_page()
    opened.set_default_timeout(20_000)
    try:
        yield opened
    finally:
        context.close()


def test_approval_from_the_run_form_to_the_inbox_and_back(server: str, page: Page) -> None:
    page.goto(f"{server}/ui/#/run")
    page.select_option("#run-service", "approval")
    page.fill("#run-input", '{"request": "deploy v2"}')
    page.click("#run-form button[type=submit]")
    expect(page).to_have_url(re.compile(r"#/task/"))
    task_id = page.url.split("#/task/")[1]
    expect(page.locator("#task-status")).to_contain_text("waiting_for_human")

    page.goto(f"{server}/ui/#/inbox")
    card = page.locator(f'.card[data-task-id^="{task_id}-human"]')
    expect(card).to_contain_text("Approval needed")
    screenshot(page, "inbox")
    card.get_by_placeholder("Your answer, then Enter").fill("yes")
    card.get_by_placeholder("Your answer, then Enter").press("Enter")
    expect(card).to_have_count(0)

    page.goto(f"{server}/ui/#/task/{task_id}")
    expect(page.locator("#task-status")).to_contain_text("completed")
    expect(page.locator("#result")).to_contain_text('"approved": true')
    screenshot(page, "task-completed")


def test_a_question_appears_in_the_open_inbox_without_a_reload(server: str, page: Page) -> None:
    page.goto(f"{server}/ui/#/inbox")
    expect(page.locator("#connection")).to_contain_text("live")
    accepted = httpx.post(
        f"{server}/control_plane/tasks",
        json={"service": "approval", "input": {"request": "live question"}},
    ).json()
    card = page.locator(f'.card[data-task-id^="{accepted["task_id"]}-human"]')
    expect(card).to_contain_text("live question")
    httpx.post(f"{server}/control_plane/tasks/{accepted['task_id']}/cancel")
    expect(card).to_have_count(0)  # withdrawn with its run: gone without a reload


def test_a_run_shows_its_events_live_and_its_result(server: str, page: Page) -> None:
    page.goto(f"{server}/ui/#/run")
    page.select_option("#run-service", "stats")
    page.fill("#run-input", '{"numbers": [1, 2, 3]}')
    page.click("#run-form button[type=submit]")
    expect(page.locator("#events")).to_contain_text("Progress")
    expect(page.locator("#task-status")).to_contain_text("completed")
    expect(page.locator("#result")).to_contain_text('"mean": 2')
    expect(page.locator("#timeline")).to_contain_text("running")
    screenshot(page, "task-events")


def test_the_run_form_checks_json_before_sending(server: str, page: Page) -> None:
    page.goto(f"{server}/ui/#/run")
    page.select_option("#run-service", "echo")
    page.fill("#run-input", "{not json")
    page.click("#run-form button[type=submit]")
    expect(page.locator("#run-error")).to_contain_text("not valid JSON")
    expect(page).to_have_url(re.compile(r"#/run$"))


def test_two_tabs_see_each_answer_disappear(server: str, browser) -> None:  # noqa: F811
    ids = [
        httpx.post(f"{server}/services/approvers/tasks", json={"input": f"question {n}"}).json()[
            "task_id"
        ]
        for n in (1, 2)
    ]
    context = browser.new_context()
    try:
        tabs = [context.new_page(), context.new_page()]
        for tab in tabs:
            tab.set_default_timeout(20_000)
            tab.goto(f"{server}/ui/#/inbox")
            for task_id in ids:
                expect(tab.locator(f'.card[data-task-id="{task_id}"]')).to_have_count(1)
        for tab, task_id in zip(tabs, ids, strict=True):
            box = tab.locator(f'.card[data-task-id="{task_id}"] input')
            box.fill("done")
            box.press("Enter")
        for tab in tabs:
            for task_id in ids:
                expect(tab.locator(f'.card[data-task-id="{task_id}"]')).to_have_count(0)
    finally:
        context.close()


def test_a_hostile_prompt_is_shown_as_text(server: str, page: Page) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    created = httpx.post(f"{server}/services/approvers/tasks", json={"input": XSS}).json()
    page.goto(f"{server}/ui/#/inbox")
    card = page.locator(f'.card[data-task-id="{created["task_id"]}"]')
    expect(card.locator(".prompt")).to_have_text(f"Approval needed: {XSS}")
    assert card.locator("img").count() == 0
    page.wait_for_timeout(300)  # give a planted onerror handler the chance it must not have
    assert dialogs == []
    httpx.post(
        f"{server}/services/approvers/tasks/{created['task_id']}/handle", json={"result": "no"}
    )


def test_services_and_sessions_pages(server: str, page: Page) -> None:
    session = httpx.post(f"{server}/control_plane/sessions").json()["session_id"]
    httpx.post(
        f"{server}/services/echo/run", json={"kwargs": {"message": "hi"}, "session_id": session}
    )
    page.goto(f"{server}/ui/#/services")
    expect(page.locator('#services tr[data-service="approvers"]')).to_contain_text("human")
    expect(page.locator('#services tr[data-service="echo"]')).to_contain_text("/services/echo")
    page.goto(f"{server}/ui/#/sessions/{session}")
    expect(page.locator("main")).to_contain_text("completed")


def test_the_console_asks_for_a_token_when_auth_is_on(
    browser,  # noqa: F811
    tmp_path: Path,
) -> None:
    config = {"services": SERVICES, "auth": {"tokens_env": "UI_TOKENS"}}
    with running_server(config, tmp_path, env={"UI_TOKENS": "right-token"}) as running:
        context = browser.new_context()
        try:
            page = context.new_page()
            page.set_default_timeout(20_000)
            page.goto(f"{running.base_url}/ui/")
            expect(page.locator("#token-form")).to_be_visible()
            page.fill("#token-input", "wrong-token")
            page.click("#token-form button")
            expect(page.locator("#token-error")).to_contain_text("refused")
            page.fill("#token-input", "right-token")
            page.click("#token-form button")
            expect(page.locator("#token-form")).to_be_hidden()
            expect(page.locator("#connection")).to_contain_text("live")
            page.goto(f"{running.base_url}/ui/#/runs")
            expect(page.locator("#runs")).to_be_visible()
            screenshot(page, "auth")
        finally:
            context.close()
        log = running.log()
        assert "right-token" not in log and "wrong-token" not in log


def test_the_console_can_be_switched_off(tmp_path: Path) -> None:
    with running_server({"services": SERVICES, "ui": {"enabled": False}}, tmp_path) as running:
        assert httpx.get(f"{running.base_url}/ui/").status_code == 404


def test_the_open_inbox_catches_up_after_a_server_restart(tmp_path: Path, page: Page) -> None:
    """The new process numbers its feed from 1 again: the page must not take its old position
    as current (and skip what happened meanwhile); it reloads what it shows once reconnected."""
    from tests.conftest import free_port

    port = free_port()
    with running_server({"services": SERVICES}, tmp_path, port=port) as first:
        base = first.base_url
        page.goto(f"{base}/ui/#/inbox")
        expect(page.locator("#connection")).to_contain_text("live")
        for n in range(15):  # move the old feed's position well past what the new one reaches
            httpx.post(f"{base}/services/echo/run", json={"kwargs": {"message": str(n)}})
        old = httpx.post(
            f"{base}/control_plane/tasks",
            json={"service": "approval", "input": {"request": "before the restart"}},
        ).json()
        expect(page.locator(f'.card[data-task-id^="{old["task_id"]}-human"]')).to_have_count(1)
        page.route("**/control_plane/events*", lambda route: route.abort())
    with running_server({"services": SERVICES}, tmp_path, port=port):
        new = httpx.post(
            f"{base}/control_plane/tasks",
            json={"service": "approval", "input": {"request": "after the restart"}},
        ).json()
        # the question exists before the page's feed is back
        httpx.get(f"{base}/control_plane/tasks/{new['task_id']}/result", params={"wait": 0.5})
        page.unroute("**/control_plane/events*")
        card = page.locator(f'.card[data-task-id^="{new["task_id"]}-human"]')
        expect(card).to_contain_text("after the restart")
        # the old process's question is gone with it
        expect(page.locator(f'.card[data-task-id^="{old["task_id"]}-human"]')).to_have_count(0)
        expect(page.locator("#inbox-count")).to_have_text("1")


def test_console_files_are_revalidated_unframeable_and_nothing_else_is_served(
    server: str,
) -> None:
    for path in ("/ui/", "/ui/index.html", "/ui/js/app.js", "/ui/app.css"):
        answer = httpx.get(f"{server}{path}")
        assert answer.status_code == 200, path
        # no heuristic caching: after an upgrade no old module runs under a new page
        assert answer.headers["cache-control"] == "no-cache", path
        assert answer.headers["x-frame-options"] == "DENY"
        policy = answer.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert answer.headers["x-content-type-options"] == "nosniff"
        again = httpx.get(f"{server}{path}", headers={"If-None-Match": answer.headers["etag"]})
        assert again.status_code == 304 if path != "/ui/" else again.status_code in (200, 304)
    with httpx.Client(base_url=server) as client:
        for raw in (b"/ui/../gateway/web/ui.py", b"/ui/%2e%2e/ui.py", b"/ui/js/../../ui.py"):
            request = client.build_request("GET", "/ui/")
            request.url = request.url.copy_with(raw_path=raw)
            assert client.send(request).status_code == 404, raw
