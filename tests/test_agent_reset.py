"""`reset_agent` applies to a session whether or not it has saved memory yet: a run in flight
(even the session's first) ends without saving what it saw, so the next question starts fresh."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest

import tests.fixtures_agents as fixtures
from tests.conftest import gateway_client, running_server

pytestmark = pytest.mark.anyio

CONFIG = {
    "shutdown_grace": 1,
    "store": {"kind": "memory"},
    "services": {
        "holder": {"type": "agent", "source": "tests.fixtures_agents:build_holding_agent"}
    },
}


async def _until_inside_the_tool(cp, task_id: str) -> None:
    subscription = cp.subscribe(task_id)
    try:
        with anyio.fail_after(10):
            async for event in subscription:
                if event.name == "ToolCall":
                    return
        raise AssertionError("the run ended before calling its tool")
    finally:
        subscription.close()


async def _session(client: httpx.AsyncClient) -> str:
    return (await client.post("/control_plane/sessions")).json()["session_id"]


async def _submit(client: httpx.AsyncClient, session_id: str, text: str) -> str:
    body = {"service": "holder", "input": text, "session_id": session_id}
    response = await client.post("/control_plane/tasks", json=body)
    assert response.status_code == 202, response.text
    return response.json()["task_id"]


async def _result(client: httpx.AsyncClient, task_id: str) -> dict:
    response = await client.get(f"/control_plane/tasks/{task_id}/result", params={"wait": 10})
    assert response.status_code == 200, response.text
    return response.json()


async def test_reset_during_a_sessions_first_run_drops_that_runs_messages() -> None:
    apps: list = []
    async with gateway_client(CONFIG, app_out=apps) as client:
        cp = apps[0].state.runtime.control_plane
        sid, other = await _session(client), await _session(client)
        first = await _submit(client, sid, "one")
        await _until_inside_the_tool(cp, first)

        reset = await client.post("/services/holder/reset_agent", params={"session_id": sid})
        assert reset.json() == {"message": "Agent reset", "sessions_cleared": 1}
        fixtures.GATE.opened.set()
        ended = await _result(client, first)
        assert ended["status"] == "completed"
        # the run itself still answers, but its messages were not kept
        assert ended["result"] == "user turns seen: 1"
        messages = await client.get("/services/holder/messages", params={"session_id": sid})
        assert messages.json()["items"] == []
        second = await _result(client, await _submit(client, sid, "two"))
        assert second["result"] == "user turns seen: 1"

        # without a reset, a session's second run does see its first (the control)
        await _result(client, await _submit(client, other, "one"))
        control = await _result(client, await _submit(client, other, "two"))
        assert control["result"] == "user turns seen: 2"


async def test_reset_during_a_first_run_over_http(tmp_path: Path) -> None:
    """Real server, durable store: the agent's first run in a session waits for a person (a
    human service used as its tool); the reset arrives meanwhile; nothing is saved."""
    cfg = {
        "shutdown_grace": 1,
        "store": {"kind": "sqlite", "path": str(tmp_path / "reset.db")},
        "services": {
            "desk": {"type": "human"},
            "front": {
                "type": "agent",
                "source": "tests.fixtures_agents:build_delegating_agent",
                "tools": ["desk"],
            },
        },
    }
    with running_server(cfg, tmp_path, env={"GATEWAY_SECRET": "reset"}) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=20) as http:
            sid = await _session(http)
            body = {"service": "front", "input": "approve?", "session_id": sid}
            task_id = (await http.post("/control_plane/tasks", json=body)).json()["task_id"]
            with anyio.fail_after(10):
                async with http.stream("GET", "/control_plane/events") as feed:
                    async for line in feed.aiter_lines():
                        if '"kind":"human"' in line and '"name":"created"' in line:
                            break
            queue = (await http.get("/services/desk/tasks")).json()
            human_id = (queue["items"] if isinstance(queue, dict) else queue)[0]["task_id"]

            reset = await http.post("/services/front/reset_agent", params={"session_id": sid})
            assert reset.json()["sessions_cleared"] == 1
            answer = {"result": "approved"}
            handled = await http.post(f"/services/desk/tasks/{human_id}/handle", json=answer)
            assert handled.status_code == 200, handled.text
            result = await http.get(f"/control_plane/tasks/{task_id}/result", params={"wait": 10})
            assert result.json()["status"] == "completed"
            assert result.json()["result"] == "Delegate says: approved"
            messages = await http.get("/services/front/messages", params={"session_id": sid})
            assert messages.json()["items"] == []
