"""AgentService: tools across two tool services, per-session memory, pause/resume, failures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.conftest import gateway_client, running_server

CONFIG: dict[str, Any] = {
    "services": {
        "adder": {"type": "tool", "source": "examples.tools:additive_tools"},
        "multiplier": {"type": "tool", "source": "examples.tools:multiplicative_tools"},
        "assistant": {
            "type": "agent",
            "source": "examples.agent:build_agent",
            "tools": ["adder", "multiplier"],
            "tool_timeout": 5,
        },
        "broken": {"type": "agent", "source": "tests.fixtures_agents:build_failing_agent"},
        "front": {
            "type": "agent",
            "source": "tests.fixtures_agents:build_delegating_agent",
            "tools": ["assistant"],
        },
    }
}


async def ask(client: httpx.AsyncClient, text: str, session_id: str | None = None) -> dict:
    body: dict[str, Any] = {"input": text, "wait": 10}
    if session_id:
        body["session_id"] = session_id
    response = await client.post("/services/assistant/run", json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def new_session(client: httpx.AsyncClient) -> str:
    return (await client.post("/control_plane/sessions")).json()["session_id"]


def user_turns(messages: dict | list) -> list[str]:
    """The user's turns of a history, or of a `/messages` page read with `order=asc`."""
    items = messages["items"] if isinstance(messages, dict) else messages
    return [m["content"] for m in items if m["role"] == "user"]


@pytest.mark.anyio
async def test_agent_answers_with_tools_of_two_tool_services() -> None:
    apps: list = []
    async with gateway_client(CONFIG, app_out=apps) as client:
        run = await ask(client, "What is (3+4)*5?")
        info = (await client.get("/services/assistant/")).json()
        delivered = {s["message_type"]: s["delivered"] for s in apps[0].state.runtime.bus.stats()}
    assert run["status"] == "completed"
    assert run["result"] == "The answer is 35."
    calls = [c for m in run["history"] for c in m["additional_kwargs"].get("tool_calls", [])]
    assert [(c["name"], c["kwargs"]) for c in calls] == [
        ("add", {"a": 3, "b": 4}),
        ("multiply", {"a": 7, "b": 5}),
    ]
    assert [m["content"] for m in run["history"] if m["role"] == "tool"] == ["7", "35"]
    assert [m["role"] for m in run["history"]] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "assistant",
    ]
    assert run["history"][1]["additional_kwargs"]["tool_calls"][0]["name"] == "add"
    assert info["tools"] == ["add", "subtract", "multiply", "divide"]
    assert info["tasks"][0]["status"] == "completed"
    assert delivered["adder"] >= 1 and delivered["multiplier"] >= 1  # the calls crossed the bus


@pytest.mark.anyio
async def test_agent_events_reach_the_task_event_stream() -> None:
    async with gateway_client(CONFIG) as client:
        accepted = await client.post(
            "/control_plane/tasks", json={"service": "assistant", "input": "What is 2*(1+1)?"}
        )
        task_id = accepted.json()["task_id"]
        await client.get(f"/control_plane/tasks/{task_id}/result", params={"wait": 10})
        stream = await client.get(f"/control_plane/tasks/{task_id}/events")
    events = [
        json.loads(line[len("data: ") :])
        for line in stream.text.splitlines()
        if line.startswith("data: ")
    ]
    names = [e["name"] for e in events if e["kind"] == "event"]
    assert names.count("ToolCall") == 2 and names.count("ToolCallResult") == 2
    results = [e["data"] for e in events if e["name"] == "ToolCallResult"]
    assert [(r["tool_name"], r["output"]) for r in results] == [("add", "2"), ("multiply", "4")]
    deltas = [e["data"]["delta"] for e in events if e["name"] == "AgentStream"]
    assert "The answer is 4." in deltas
    assert events[-1]["kind"] == "result" and events[-1]["status"] == "completed"


@pytest.mark.anyio
async def test_memory_is_kept_within_a_session_and_separate_across_sessions() -> None:
    async with gateway_client(CONFIG) as client:
        first, second = await new_session(client), await new_session(client)
        one = await ask(client, "What is 2+3?", first)
        two = await ask(client, "What is ans*10?", first)
        other = await ask(client, "What is ans*10?", second)
        default = await ask(client, "What is ans*10?")
        first_messages = (
            await client.get(
                "/services/assistant/messages", params={"session_id": first, "order": "asc"}
            )
        ).json()
        default_messages = (
            await client.get("/services/assistant/messages", params={"order": "asc"})
        ).json()
    assert one["result"] == "The answer is 5."
    assert two["result"] == "The answer is 50.", "chat history was lost between two runs"
    assert user_turns(two["history"]) == ["What is 2+3?", "What is ans*10?"]
    assert other["result"] == "There is no previous answer in this conversation yet."
    assert default["result"] == other["result"]
    assert user_turns(first_messages) == ["What is 2+3?", "What is ans*10?"]
    assert user_turns(default_messages) == ["What is ans*10?"]


@pytest.mark.anyio
async def test_reset_clears_memory() -> None:
    async with gateway_client(CONFIG) as client:
        keep, drop = await new_session(client), await new_session(client)
        await ask(client, "What is 1+1?", keep)
        await ask(client, "What is 2+2?", drop)
        partial = await client.post("/services/assistant/reset_agent", params={"session_id": drop})
        kept = await ask(client, "What is ans+1?", keep)
        dropped = await ask(client, "What is ans+1?", drop)
        full = await client.post("/services/assistant/reset_agent")
        after = (
            await client.get(
                "/services/assistant/messages", params={"session_id": keep, "order": "asc"}
            )
        ).json()
        forgotten = await ask(client, "What is ans+1?", keep)
    assert partial.json()["sessions_cleared"] == 1
    assert kept["result"] == "The answer is 3."
    assert dropped["result"] == "There is no previous answer in this conversation yet."
    assert full.json() == {"message": "Agent reset", "sessions_cleared": 2}
    assert after == {"items": [], "total": 0}
    assert forgotten["result"] == "There is no previous answer in this conversation yet."


@pytest.mark.anyio
async def test_stopped_agent_queues_tasks_and_runs_them_in_order_when_resumed() -> None:
    questions = ["What is 1+1?", "What is 2+2?", "What is 3+3?"]
    async with gateway_client(CONFIG) as client:
        stopped = await client.post(
            "/services/assistant/toggle_agent_running", json={"state": "stopped"}
        )
        worker = (await client.get("/services/assistant/is_worker_running")).json()
        ids = []
        for question in questions:
            created = await client.post("/services/assistant/task", json={"input": question})
            assert created.status_code == 200, created.text
            ids.append(created.json()["task_id"])
        await anyio.wait_all_tasks_blocked()
        waiting = [(await client.get(f"/control_plane/tasks/{i}")).json()["status"] for i in ids]
        assert (await client.get("/services/assistant/messages", params={"order": "asc"})).json()[
            "items"
        ] == []
        resumed = await client.post("/services/assistant/toggle_agent_running?state=running")
        records = [
            (await client.get(f"/control_plane/tasks/{i}/result", params={"wait": 10})).json()
            for i in ids
        ]
        messages = (
            await client.get("/services/assistant/messages", params={"order": "asc"})
        ).json()
    assert stopped.json() == {"running": False} and worker == {"running": False}
    assert waiting == ["pending"] * 3
    assert resumed.json() == {"running": True}
    assert [r["status"] for r in records] == ["completed"] * 3
    assert [r["result"] for r in records] == [
        "The answer is 2.",
        "The answer is 4.",
        "The answer is 6.",
    ]
    assert user_turns(messages) == questions  # ran one after another, in submission order


@pytest.mark.anyio
async def test_toggle_rejects_an_unknown_state() -> None:
    async with gateway_client(CONFIG) as client:
        bad = await client.post("/services/assistant/toggle_agent_running", json={"state": "maybe"})
        worker = (await client.get("/services/assistant/is_worker_running")).json()
    assert bad.status_code == 422 and bad.json()["error"] == "validation_error"
    assert worker == {"running": True}


@pytest.mark.anyio
async def test_failing_agent_ends_the_task_failed_and_keeps_memory_clean() -> None:
    async with gateway_client(CONFIG) as client:
        run = await client.post("/services/broken/run", json={"input": "hello", "wait": 10})
        messages = (await client.get("/services/broken/messages", params={"order": "asc"})).json()
        info = (await client.get("/services/broken/")).json()
    assert run.json()["status"] == "failed"
    assert "the model is down" in run.json()["error"]
    assert messages["items"] == []
    assert info["tasks"][0]["status"] == "failed"


@pytest.mark.anyio
async def test_an_agent_uses_another_agent_service_as_a_tool() -> None:
    async with gateway_client(CONFIG) as client:
        run = await client.post(
            "/services/front/run", json={"input": "What is (1+2)*3?", "wait": 10}
        )
        info = (await client.get("/services/front/")).json()
    assert info["tools"] == ["assistant-as-tool"]
    assert run.json()["result"] == "Delegate says: The answer is 9."


def test_agent_task_through_the_real_server(tmp_path: Path) -> None:
    with (
        running_server(CONFIG, tmp_path) as server,
        httpx.Client(base_url=server.base_url, timeout=15) as client,
    ):
        accepted = client.post(
            "/control_plane/tasks", json={"service": "assistant", "input": "What is (3+4)*5?"}
        )
        assert accepted.status_code == 202, accepted.text
        task_id = accepted.json()["task_id"]
        done = client.get(f"/control_plane/tasks/{task_id}/result", params={"wait": 10})
        assert done.status_code == 200, server.log()
    assert done.json()["status"] == "completed"
    assert done.json()["result"] == "The answer is 35."


@pytest.mark.anyio
async def test_start_refuses_two_tools_with_one_name() -> None:
    config = {
        "services": {
            "all": {"type": "tool", "source": "examples.tools:tools"},
            "some": {"type": "tool", "source": "examples.tools:additive_tools"},
            "assistant": {
                "type": "agent",
                "source": "examples.agent:build_agent",
                "tools": ["all", "some"],
            },
        }
    }
    clash = pytest.RaisesExc(ValueError, match="add, subtract appear twice")
    with pytest.RaisesGroup(clash, allow_unwrapped=True, flatten_subgroups=True):
        async with gateway_client(config):
            pass
