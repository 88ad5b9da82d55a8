"""`/docs` renders our OpenAPI 3.1 document in a real browser, offline.

The old bundled Swagger UI (4.x) showed only "Unable to render this definition" for 3.1; this
loads the page in headless Chromium (tests/browser.py) against the real uvicorn server and
checks that the operations are listed and that no request left the machine.
"""

from __future__ import annotations

from pathlib import Path

from tests.browser import browser  # noqa: F401 - the fixture
from tests.conftest import running_server

CONFIG = {
    "name": "docs-test",
    "services": {"echo": {"type": "workflow", "source": "examples.echo:workflow"}},
}


def test_docs_lists_the_operations_in_chromium(browser, tmp_path: Path) -> None:  # noqa: F811
    with running_server(CONFIG, tmp_path) as server:
        page = browser.new_page()
        outside: list[str] = []
        page.on(
            "request",
            lambda request: (
                None if request.url.startswith(server.base_url) else outside.append(request.url)
            ),
        )
        try:
            page.goto(f"{server.base_url}/docs")
            page.wait_for_selector(".opblock", timeout=30_000)
            text = page.inner_text("body")
            paths = [e.inner_text() for e in page.query_selector_all(".opblock-summary-path")]
        finally:
            page.close()
    assert "Unable to render this definition" not in text
    assert "/control_plane/tasks" in paths and "/services/echo/run" in paths
    assert len(paths) >= 30, paths
    assert "OAS 3.1" in text
    assert outside == [], f"the docs page fetched from outside: {outside}"
