"""A real browser for the tests: Debian's Chromium driven by Playwright for Python.

Playwright's own browser download does not work on these machines, so the tests launch
`/usr/bin/chromium` (apt-get install chromium; `.ci/run` installs it). A missing browser fails the
test that needs it: it never skips.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
# Assertions wait this long (ms): a loaded 2-core machine can take seconds to run a step.
WAIT_MS = 20_000
# Screenshots of what the tests saw (git-ignored).
OUTPUT = Path(__file__).resolve().parent / "output"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            yield launched
        finally:
            launched.close()


def screenshot(page: object, name: str) -> Path:
    OUTPUT.mkdir(exist_ok=True)
    path = OUTPUT / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
    return path
