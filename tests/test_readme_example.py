"""The README's "Writing your own service" example, taken from the README itself, works."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.app import build_app
from gateway.config import parse_config
from tests.conftest import ROOT

pytestmark = pytest.mark.anyio


def readme_block(marker: str, language: str) -> str:
    text = (ROOT / "README.md").read_text()
    for block in re.findall(rf"```{language}\n(.*?)```", text, flags=re.S):
        if marker in block:
            return block
    raise AssertionError(f"no {language} block with {marker!r} in README.md")


async def test_the_custom_service_example_runs_as_documented(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "myproject"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "shouter.py").write_text(readme_block("class Shouter", "python"))
    config = yaml.safe_load(readme_block("type: custom", "yaml"))
    monkeypatch.setattr(sys, "path", list(sys.path))  # the config folder is added to it
    app = build_app(parse_config(config, str(tmp_path / "config.yaml")))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            accepted = await client.post(
                "/control_plane/tasks", json={"service": "shout", "input": "hi"}
            )
            task_id = accepted.json()["task_id"]
            done = (await client.get(f"/control_plane/tasks/{task_id}/result?wait=5")).json()
            ping = (await client.get("/services/shout/ping")).json()
            documented = (await client.get("/openapi.json")).json()["paths"]
    assert accepted.status_code == 202
    assert (done["status"], done["result"]) == ("completed", "HI")
    assert ping == {"pong": "shout"}
    assert "/services/shout/ping" in documented
