"""The REST client against an in-process gateway and against the real server."""

from __future__ import annotations

import httpx
import pytest

from gateway.app import build_app
from gateway.client import AsyncGatewayClient, GatewayClient, GatewayError
from gateway.config import parse_config
from tests.conftest import running_server

CONFIG = {
    "default_service": "echo",
    "services": {
        "echo": {"type": "workflow", "source": "examples.echo:workflow"},
        "stats": {"type": "workflow", "source": "examples.pipeline:build"},
        "counter": {"type": "workflow", "source": "examples.counter:workflow"},
    },
}


@pytest.mark.anyio
async def test_async_client_runs_submits_streams_and_reports_errors() -> None:
    app = build_app(parse_config(CONFIG, "client-test"))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with AsyncGatewayClient("http://gateway", transport=transport) as client:
            ran = await client.run("echo", message="hi")
            assert (ran["status"], ran["result"]) == ("completed", "hi")

            task_id = await client.submit({"numbers": [2, 4]}, service="stats")
            done = await client.result(task_id, wait=10)
            assert done["status"] == "completed"
            assert done["result"]["data"]["result"]["mean"] == 3.0

            kinds = [e["kind"] async for e in client.events(task_id)]
            assert kinds[-1] == "result"

            session = await client.create_session()
            turns = [
                (await client.run("counter", session_id=session))["data"]["result"]["turns"]
                for _ in range(2)
            ]
            assert turns == [1, 2]

            with pytest.raises(GatewayError) as missing:
                await client.task("no-such-task")
            assert (missing.value.status, missing.value.error) == (404, "not_found")


def test_sync_client_against_the_real_server(tmp_path) -> None:
    with running_server(CONFIG, tmp_path) as server, GatewayClient(server.base_url) as client:
        assert set(client.services()) == {"echo", "stats", "counter"}
        task_id = client.submit({"message": "over http"})
        assert client.result(task_id, wait=10)["result"]["result"] == "over http"
        events = list(client.events(task_id))
        assert [e["kind"] for e in events][-1] == "result"
        failed = client.run("stats", numbers=[])
        assert failed["status"] == "failed" and "non-empty" in failed["error"]
