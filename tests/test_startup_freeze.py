"""A served gateway moves what start-up made out of the garbage collector's way; an app built
for a test (many per process) does not, and a served one gives it back when it stops."""

from __future__ import annotations

import gc
from pathlib import Path

import httpx
import pytest

from gateway.app import build_app, default_app
from gateway.config import parse_config

pytestmark = pytest.mark.anyio

CONFIG = {"services": {"echo": {"type": "workflow", "source": "examples.echo:workflow"}}}
YAML = "services:\n  echo: {type: workflow, source: 'examples.echo:workflow'}\n"


async def _runs(app) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        answer = await client.post("/services/echo/run", json={"kwargs": {"message": "hi"}})
        assert answer.json()["result"] == "hi"


async def test_the_served_app_freezes_start_up_objects_and_unfreezes_on_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(YAML)
    monkeypatch.setenv("GATEWAY_CONFIG", str(config))
    monkeypatch.setenv("GATEWAY_SECRET", "freeze-test")
    monkeypatch.setattr("gateway.app.configure_logging", lambda: None)  # keep pytest's logging
    assert gc.get_freeze_count() == 0
    app = default_app()  # what `uvicorn gateway.app:app` serves
    async with app.router.lifespan_context(app):
        assert gc.get_freeze_count() > 10_000  # modules, services, their runtimes
        await _runs(app)
    assert gc.get_freeze_count() == 0


async def test_an_app_built_directly_leaves_the_collector_alone() -> None:
    app = build_app(parse_config(CONFIG, "test-config"))
    async with app.router.lifespan_context(app):
        assert gc.get_freeze_count() == 0
        await _runs(app)
