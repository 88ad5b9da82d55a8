"""Fault injection: each fault hits one task or one consumer, never the gateway as a whole.

After every fault the same gateway still answers health checks and runs a normal task.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from llama_index.core.tools import ToolMetadata

from gateway.bus.memory import MessageBus
from services.kwargs import KwargsService
from services.tool.meta_tool import MetaServiceTool
from tests.conftest import gateway_client
from tests.fixtures_faults import assert_error, gate, reset_gates, wait_ended, wait_status

pytestmark = pytest.mark.anyio

ECHO = {"type": "workflow", "source": "examples.echo:workflow"}


def config(**services: dict[str, Any]) -> dict[str, Any]:
    return {"default_service": "echo", "services": {"echo": ECHO, **services}}


async def assert_serves_normally(client) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).status_code == 200
    response = await client.post("/services/echo/run", json={"kwargs": {"message": "still here"}})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "completed"
    assert response.json()["result"] == "still here"


async def submit(client, service: str, kwargs: dict[str, Any] | None = None, **extra) -> str:
    response = await client.post(
        "/control_plane/tasks", json={"service": service, "input": kwargs or {}, **extra}
    )
    assert response.status_code == 202, response.text
    return response.json()["task_id"]


async def test_a_raising_service_fails_its_task_only() -> None:
    cfg = config(boom={"type": "workflow", "source": "tests.fixtures_faults:raising"})
    async with gateway_client(cfg) as client:
        doomed = [await submit(client, "boom", {"tag": f"#{i}"}) for i in range(3)]
        fine = [await submit(client, "echo", {"message": f"ok {i}"}) for i in range(3)]
        for i, task_id in enumerate(doomed):
            record = await wait_ended(client, task_id)
            assert record["status"] == "failed"
            assert f"RuntimeError: injected fault #{i}" in record["error"]
        for i, task_id in enumerate(fine):
            record = await wait_ended(client, task_id)
            assert record["status"] == "completed"
            assert record["result"] == f"ok {i}"
        await assert_serves_normally(client)


async def test_a_raising_bus_handler_fails_the_task_it_was_handling() -> None:
    cfg = config(broken={"type": "custom", "source": "tests.fixtures_faults:BrokenHandlerService"})
    async with gateway_client(cfg) as client:
        task_id = await submit(client, "broken")
        record = await wait_ended(client, task_id)
        assert record["status"] == "failed"
        assert "KeyError" in record["error"] and "handler bug" in record["error"]
        await assert_serves_normally(client)


async def test_a_hanging_service_times_out_and_frees_its_slot() -> None:
    cfg = config(
        stuck={
            "type": "workflow",
            "source": "tests.fixtures_faults:hanging",
            "timeout": 0.2,
            "max_concurrent_tasks": 1,
        }
    )
    async with gateway_client(cfg) as client:
        # One slot: the second run can only start once the first one's timeout freed it.
        first = await submit(client, "stuck")
        second = await submit(client, "stuck")
        for task_id in (first, second):
            record = await wait_ended(client, task_id)
            assert record["status"] == "timed_out"
            assert "did not finish within 0.2s" in record["error"]
        # The synchronous form reports the same.
        response = await client.post("/services/stuck/run", json={"kwargs": {}})
        assert response.status_code == 200
        assert response.json()["status"] == "timed_out"
        await assert_serves_normally(client)


async def test_a_crashed_consumer_loop_is_restarted_and_fails_its_in_flight_task(
    monkeypatch,
) -> None:
    crashed: list[str] = []
    original = MessageBus._handle

    async def crash_once(self, registration, message):
        # An unexpected error in the loop itself (not in the handler, whose errors are caught).
        if registration.consumer.message_type == "victim" and not crashed:
            crashed.append(message.id_)
            raise RuntimeError("receive loop died")
        await original(self, registration, message)

    monkeypatch.setattr(MessageBus, "_handle", crash_once)
    # Workflow services are delivered to inline (no receive loop); this is about the loops.
    monkeypatch.setattr(KwargsService, "inline_delivery", False)
    apps: list = []
    cfg = config(victim={"type": "workflow", "source": "tests.fixtures_faults:nap"})
    async with gateway_client(cfg, app_out=apps) as client:
        bus: MessageBus = apps[0].state.runtime.bus
        in_flight = await submit(client, "victim")
        other = await submit(client, "echo", {"message": "unaffected"})
        record = await wait_ended(client, in_flight, timeout=5)
        assert crashed, "the injected crash did not happen"
        assert record["status"] == "failed"
        assert "receive loop died" in record["error"]
        assert (await wait_ended(client, other))["status"] == "completed"

        (victim,) = [s for s in bus.stats() if s["message_type"] == "victim"]
        assert victim["restarts"] == 1
        # The restarted loop serves the same service again.
        again = await submit(client, "victim", {"seconds": 0})
        assert (await wait_ended(client, again))["status"] == "completed"
        await assert_serves_normally(client)


async def test_a_tool_service_that_never_answers_makes_the_caller_time_out() -> None:
    apps: list = []
    cfg = config(mute={"type": "custom", "source": "tests.fixtures_faults:MuteService"})
    async with gateway_client(cfg, app_out=apps) as client:
        runtime = apps[0].state.runtime
        tool = MetaServiceTool(
            ToolMetadata(name="lookup", description="Looks things up."),
            "mute",
            runtime.bus,
            timeout=0.2,
        )
        with anyio.fail_after(5):
            output = await tool.acall(query="anything")
        assert output.is_error
        assert "timed out" in output.content
        assert runtime.services["mute"].received == 1
        assert tool._inbox.outstanding == 0  # the caller forgot the call: nothing leaks
        await assert_serves_normally(client)


async def test_a_full_bus_refuses_with_503_and_the_gateway_keeps_serving() -> None:
    reset_gates()
    cfg = config(stuck={"type": "custom", "source": "tests.fixtures_faults:StuckService"})
    cfg["bus"] = {"buffer_size": 1, "publish_timeout": 0.05}
    async with gateway_client(cfg) as client:
        blocked = gate("stuck")
        held = await submit(client, "stuck")  # taken by the handler, which blocks
        with anyio.fail_after(5):
            await blocked.reached(1).wait()
        queued = await submit(client, "stuck")  # fills the one-slot buffer
        response = await client.post(
            "/control_plane/tasks", json={"service": "stuck", "task_id": "refused-1"}
        )
        body = assert_error(response, 503)
        assert "full" in body["detail"]
        assert int(response.headers["retry-after"]) >= 1
        # Refused means never accepted: nothing to find, nothing left running.
        assert_error(await client.get("/control_plane/tasks/refused-1"), 404)
        await assert_serves_normally(client)

        blocked.opened.set()
        for task_id in (held, queued):
            record = await wait_ended(client, task_id)
            assert record["status"] == "completed"
            assert record["result"] == "unstuck"
        await assert_serves_normally(client)


async def test_with_a_durable_store_a_committed_task_waits_for_bus_room(tmp_path) -> None:
    """With sqlite a task is committed (so accepted) before it is dispatched: a full bus then
    no longer refuses it; it waits for room in the background and still runs."""
    reset_gates()
    cfg = config(stuck={"type": "custom", "source": "tests.fixtures_faults:StuckService"})
    cfg["bus"] = {"buffer_size": 1, "publish_timeout": 0.05}
    cfg["store"] = {"kind": "sqlite", "path": str(tmp_path / "bus.db")}
    async with gateway_client(cfg) as client:
        blocked = gate("stuck")
        held = await submit(client, "stuck")
        with anyio.fail_after(5):
            await blocked.reached(1).wait()
        queued = await submit(client, "stuck")  # fills the one-slot buffer
        waiting = await submit(client, "stuck")  # accepted: waits for room, not refused
        assert (await client.get(f"/control_plane/tasks/{waiting}")).json()["status"] == "pending"
        await assert_serves_normally(client)
        blocked.opened.set()
        for task_id in (held, queued, waiting):
            record = await wait_ended(client, task_id)
            assert record["status"] == "completed", record


async def test_a_cancelled_task_stops_its_run_and_others_continue() -> None:
    reset_gates()
    cfg = config(gated={"type": "workflow", "source": "tests.fixtures_faults:gated"})
    async with gateway_client(cfg) as client:
        victim = await submit(client, "gated", {"gate": "never"})
        survivor = await submit(client, "gated", {"gate": "open", "n": 2})
        with anyio.fail_after(5):
            await gate("never").reached(1).wait()
            await gate("open").reached(1).wait()
        await wait_status(client, victim, "running")
        response = await client.post(f"/control_plane/tasks/{victim}/cancel")
        assert response.status_code == 200 and response.json()["status"] == "cancelled"
        with anyio.fail_after(5):
            while not gate("never").cancelled:  # the run itself was stopped, not just marked
                await anyio.sleep(0.01)
        gate("open").opened.set()
        record = await wait_ended(client, survivor)
        assert record["status"] == "completed"
        assert record["result"] == {"n": 2}
        assert_error(await client.post(f"/control_plane/tasks/{victim}/cancel"), 409)
        await assert_serves_normally(client)
