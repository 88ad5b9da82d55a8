"""ToolService: endpoints, concurrency over the bus, and errors that always answer the caller."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest

from gateway.bus import Consumer
from gateway.messages import ActionTypes, QueueMessage, ToolCall, ToolCallBundle, ToolCallResult
from tests import fixtures_agents
from tests.conftest import gateway_client
from tests.fixtures_agents import BusInbox
from tests.service_tokens import SERVICE_AUTH, with_remote

pytestmark = pytest.mark.anyio

CALC = {"services": {"calc": {"type": "tool", "source": "examples.tools:tools"}}}


def gate_config(max_calls: int) -> dict[str, Any]:
    return {
        "services": {
            "gate": {
                "type": "tool",
                "source": "tests.fixtures_agents:build_gate_tools",
                "max_concurrent_calls": max_calls,
            }
        }
    }


def tool_call(name: str, source: str = "test-inbox", **kwargs: Any) -> QueueMessage:
    call = ToolCall(tool_call_bundle=ToolCallBundle(tool_name=name, tool_kwargs=kwargs))
    return QueueMessage(
        publisher_id=source,
        type="calc",
        action=ActionTypes.NEW_TOOL_CALL,
        data=call.model_dump(mode="json"),
    )


async def test_home_lists_tools_with_argument_schemas() -> None:
    async with gateway_client(CALC) as client:
        info = (await client.get("/services/calc/")).json()
    assert info["type"] == "tool"
    assert info["num_tools"] == 4
    tools = {t["name"]: t for t in info["tools"]}
    assert set(tools) == {"add", "subtract", "multiply", "divide"}
    assert tools["add"]["parameters"]["required"] == ["a", "b"]
    assert tools["add"]["parameters"]["properties"]["a"]["type"] == "number"
    assert "Add two numbers" in tools["add"]["description"]
    assert info["num_outstanding_tool_calls"] == 0


async def test_get_tool_by_name_and_unknown_is_404_json() -> None:
    async with gateway_client(CALC) as client:
        found = await client.get("/services/calc/tool", params={"name": "multiply"})
        missing = await client.get("/services/calc/tool", params={"name": "sqrt"})
        no_name = await client.get("/services/calc/tool")
    assert found.status_code == 200
    assert found.json()["tool_metadata"]["name"] == "multiply"
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"
    assert "sqrt" in missing.json()["detail"] and "multiply" in missing.json()["detail"]
    assert no_name.status_code == 422


async def test_run_answers_the_output_and_maps_errors_to_http() -> None:
    async with gateway_client(CALC) as client:
        ok = await client.post(
            "/services/calc/run", json={"tool": "add", "kwargs": {"a": 2, "b": 3}}
        )
        task_form = await client.post(
            "/services/calc/run", json={"input": '{"tool": "multiply", "kwargs": {"a": 6, "b": 7}}'}
        )
        unknown = await client.post("/services/calc/run", json={"tool": "sqrt", "kwargs": {}})
        missing = await client.post("/services/calc/run", json={"tool": "add", "kwargs": {"a": 1}})
        extra = await client.post(
            "/services/calc/run", json={"tool": "add", "kwargs": {"a": 1, "b": 2, "c": 3}}
        )
        wrong_type = await client.post(
            "/services/calc/run", json={"tool": "add", "kwargs": {"a": "x", "b": 2}}
        )
        raising = await client.post(
            "/services/calc/run", json={"tool": "divide", "kwargs": {"a": 1, "b": 0}}
        )
    assert ok.status_code == 200
    assert ok.json() == {"tool": "add", "output": "5", "raw_output": 5, "is_error": False}
    assert task_form.json()["output"] == "42"
    assert unknown.status_code == 404
    assert (missing.status_code, extra.status_code, wrong_type.status_code) == (422, 422, 422)
    assert "b: Field required" in missing.json()["detail"]
    assert "c" in extra.json()["detail"]
    # the tool's failure is its answer, not a gateway error
    assert raising.status_code == 200
    assert raising.json() == {
        "tool": "divide",
        "output": "ZeroDivisionError: division by zero",
        "raw_output": None,
        "is_error": True,
    }


async def test_tool_call_endpoint_accepts_and_delivers_the_result() -> None:
    apps: list = []
    async with gateway_client(CALC, app_out=apps) as client:
        inbox = BusInbox(apps[0].state.runtime.bus)
        kept = ToolCall(
            tool_call_bundle=ToolCallBundle(tool_name="add", tool_kwargs={"a": 1, "b": 1})
        )
        routed = ToolCall(
            tool_call_bundle=ToolCallBundle(tool_name="multiply", tool_kwargs={"a": 3, "b": 3}),
            source_id=inbox.name,
        )
        accepted = await client.post("/services/calc/tool_call", json=kept.model_dump())
        again = await client.post("/services/calc/tool_call", json=kept.model_dump())
        result = await client.get(f"/services/calc/tool_call/{kept.id_}", params={"wait": 5})
        routed_accepted = await client.post("/services/calc/tool_call", json=routed.model_dump())
        delivered = await inbox.results(1)
        unknown = await client.get("/services/calc/tool_call/nope")
    assert accepted.status_code == 202
    assert accepted.json() == {"tool_call_id": kept.id_}
    assert again.status_code == 409
    assert result.status_code == 200
    assert result.json()["result"] == "2" and result.json()["is_error"] is False
    assert routed_accepted.status_code == 202
    assert delivered[routed.id_].result == "9"
    assert delivered[routed.id_].tool_message.additional_kwargs["name"] == "multiply"
    assert unknown.status_code == 404


async def test_process_message_endpoint_takes_a_bus_message_over_http() -> None:
    apps: list = []
    async with gateway_client(with_remote(CALC), app_out=apps) as client:
        inbox = BusInbox(apps[0].state.runtime.bus)
        message = tool_call("subtract", source=inbox.name, a=10, b=4)
        accepted = await client.post(
            "/services/calc/process_message",
            content=message.model_dump_json(),
            headers=SERVICE_AUTH,
        )
        results = await inbox.results(1)
        wrong = await client.post(
            "/services/calc/process_message",
            json={"type": "calc", "action": "completed_task", "data": {}},
            headers=SERVICE_AUTH,
        )
    assert accepted.status_code == 200 and accepted.json() == {"accepted": message.id_}
    assert results[message.data["id_"]].result == "6"
    assert wrong.status_code == 422 and "does not handle" in wrong.json()["detail"]


async def test_unknown_bad_and_raising_calls_answer_the_caller_with_errors() -> None:
    apps: list = []
    async with gateway_client(CALC, app_out=apps) as client:
        bus = apps[0].state.runtime.bus
        inbox = BusInbox(bus)
        calls = [
            tool_call("sqrt", x=4),
            tool_call("add", a=1),
            tool_call("add", a=[1], b=2),
            tool_call("divide", a=1, b=0),
            tool_call("add", a=20, b=22),
        ]
        for message in calls:
            await bus.publish(message)
        results = await inbox.results(len(calls), timeout=5)
        assert (await client.get("/services/calc/")).json()["num_outstanding_tool_calls"] == 0
    by_call = [results[m.data["id_"]] for m in calls]
    assert [r.is_error for r in by_call] == [True, True, True, True, False]
    assert "unknown tool 'sqrt'" in by_call[0].result
    assert "b: Field required" in by_call[1].result
    assert "bad arguments for tool 'add'" in by_call[2].result
    assert "ZeroDivisionError" in by_call[3].result
    assert by_call[4].result == "42"


async def test_malformed_tool_call_is_answered_with_an_error() -> None:
    apps: list = []
    async with gateway_client(CALC, app_out=apps):
        bus = apps[0].state.runtime.bus
        inbox = BusInbox(bus)
        await bus.publish(
            QueueMessage(
                publisher_id=inbox.name,
                type="calc",
                action=ActionTypes.NEW_TOOL_CALL,
                data={"id_": "broken-1", "tool_call_bundle": "not a bundle"},
            )
        )
        results = await inbox.results(1)
    assert results["broken-1"].is_error
    assert "malformed tool call" in results["broken-1"].result


async def test_calls_over_the_bus_really_overlap() -> None:
    """Four calls that each return only once all four are inside at the same time."""
    apps: list = []
    async with gateway_client(gate_config(4), app_out=apps):
        bus = apps[0].state.runtime.bus
        inbox = BusInbox(bus)
        messages = [tool_call("meet", n=4) for _ in range(4)]
        for message in messages:
            message.type = "gate"
            await bus.publish(message)
        results = await inbox.results(4, timeout=8)
    assert [r.result for r in results.values()] == ["met"] * 4
    assert fixtures_agents.GATE.arrived == 4


async def test_max_concurrent_calls_bounds_the_overlap() -> None:
    apps: list = []
    async with gateway_client(gate_config(2), app_out=apps) as client:
        bus = apps[0].state.runtime.bus
        inbox = BusInbox(bus)
        for label in ("one", "two", "three"):
            message = tool_call("hold", label=label)
            message.type = "gate"
            await bus.publish(message)
        gate = fixtures_agents.GATE
        await anyio.wait_all_tasks_blocked()  # every call is inside the tool or queued
        assert gate.active == 2
        info = (await client.get("/services/gate/")).json()
        assert info["num_outstanding_tool_calls"] == 3
        gate.opened.set()
        results = await inbox.results(3)
    assert sorted(r.result for r in results.values()) == ["one", "three", "two"]
    assert gate.peak == 2


async def test_sync_tools_run_in_a_worker_thread_and_raising_tools_error() -> None:
    async with gateway_client(gate_config(2)) as client:
        thread = await client.post("/services/gate/run", json={"tool": "thread_name"})
        raising = await client.post(
            "/services/gate/run", json={"tool": "boom", "kwargs": {"reason": "kaput"}}
        )
    assert thread.status_code == 200
    assert thread.json()["output"] != threading.current_thread().name
    assert raising.status_code == 200
    assert raising.json()["is_error"] is True
    assert raising.json()["output"] == "RuntimeError: kaput"


async def test_a_tool_that_overruns_the_wait_answers_an_error_not_a_5xx() -> None:
    async with gateway_client(gate_config(2)) as client:
        held = await client.post(
            "/services/gate/run", json={"tool": "hold", "kwargs": {"label": "x"}, "wait": 0.05}
        )
    assert held.status_code == 200
    assert held.json()["is_error"] is True
    assert held.json()["output"] == "no output within 0.05s"


async def test_control_plane_task_runs_a_tool() -> None:
    async with gateway_client(CALC) as client:
        accepted = await client.post(
            "/control_plane/tasks",
            json={"service": "calc", "input": {"tool": "multiply", "kwargs": {"a": 6, "b": 7}}},
        )
        task_id = accepted.json()["task_id"]
        done = await client.get(f"/control_plane/tasks/{task_id}/result", params={"wait": 5})
        failed = await client.post(
            "/control_plane/tasks", json={"service": "calc", "input": {"tool": "sqrt"}}
        )
        failed_done = await client.get(
            f"/control_plane/tasks/{failed.json()['task_id']}/result", params={"wait": 5}
        )
    assert done.json()["status"] == "completed"
    assert done.json()["result"] == 42  # the raw output
    assert failed_done.json()["status"] == "failed"
    assert "unknown tool 'sqrt'" in failed_done.json()["error"]


async def test_calls_cancelled_at_shutdown_answer_their_callers_at_once() -> None:
    """The running call and the one queued behind it both hear `cancelled` during shutdown, so
    their callers do not wait out a timeout for an answer that would never come."""
    apps: list = []
    replies: list[ToolCallResult] = []

    async def record(message: QueueMessage) -> None:
        replies.append(ToolCallResult.model_validate(message.data))

    async with gateway_client(gate_config(1), app_out=apps):
        bus = apps[0].state.runtime.bus
        # inline: the answer is recorded in the publisher's task, even while everything stops
        bus.register_consumer(
            Consumer(message_type="caller", handler=record, id_="caller", inline=True)
        )
        sent = []
        for label in ("running", "queued"):
            message = tool_call("hold", source="caller", label=label)
            message.type = "gate"
            sent.append(message.data["id_"])
            await bus.publish(message)
        await anyio.wait_all_tasks_blocked()
        assert fixtures_agents.GATE.active == 1  # one inside the tool, one queued behind it
        assert replies == []
    by_id = {reply.id_: reply for reply in replies}
    assert sorted(by_id) == sorted(sent)
    for reply in by_id.values():
        assert reply.is_error and "cancelled" in reply.result
