"""A served gateway moves what start-up made out of the garbage collector's way and collects
young garbage less often; an app built for a test (many per process) does neither, and a served
one gives both back when it stops."""

from __future__ import annotations

import gc
from pathlib import Path

import httpx
import pytest

from gateway.app import build_app, default_app
from gateway.config import ConfigError, parse_config

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
    before = gc.get_threshold()
    app = default_app()  # what `uvicorn gateway.app:app` serves
    async with app.router.lifespan_context(app):
        assert gc.get_freeze_count() > 10_000  # modules, services, their runtimes
        assert gc.get_threshold() == (7_000, *before[1:])
        await _runs(app)
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before


async def test_the_young_threshold_is_configurable_and_zero_leaves_it_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_SECRET", "freeze-test")
    monkeypatch.setattr("gateway.app.configure_logging", lambda: None)
    before = gc.get_threshold()
    for setting, expected in ((25_000, 25_000), (0, before[0])):
        config = tmp_path / f"gw{setting}.yaml"
        config.write_text(f"gc_young_threshold: {setting}\n" + YAML)
        monkeypatch.setenv("GATEWAY_CONFIG", str(config))
        app = default_app()
        async with app.router.lifespan_context(app):
            assert gc.get_threshold()[0] == expected
        assert gc.get_threshold() == before
    with pytest.raises(ConfigError, match="gc_young_threshold: Input should be greater"):
        parse_config({**CONFIG, "gc_young_threshold": -1}, "test-config")


async def test_an_app_built_directly_leaves_the_collector_alone() -> None:
    before = gc.get_threshold()
    app = build_app(parse_config(CONFIG, "test-config"))
    async with app.router.lifespan_context(app):
        assert gc.get_freeze_count() == 0
        assert gc.get_threshold() == before
        await _runs(app)


async def test_a_young_threshold_the_collector_cannot_take_is_a_config_error() -> None:
    # gc.set_threshold takes a C int: past it, serving would fail at start-up (OverflowError,
    # after the freeze, left frozen) instead of the config being refused when read.
    with pytest.raises(ConfigError, match="gc_young_threshold: Input should be less"):
        parse_config({**CONFIG, "gc_young_threshold": 2**31}, "test-config")
    parse_config({**CONFIG, "gc_young_threshold": 2**31 - 1}, "test-config")
