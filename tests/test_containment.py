"""Containment: whatever user code raises ends its own task (or tool call), never the gateway.

Every entry point of `tests.fixtures_misbehaving` raises SystemExit, KeyboardInterrupt,
GeneratorExit, a BaseException subclass, a CancelledError of its own and a plain error, from a
step, a worker thread and a task it created. Each must end its task failed with "Type: text",
and the gateway must stay healthy, ready and able to run a normal task. The in-process tests
cover every combination quickly; the real-server test proves no exception reaches uvicorn's loop.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.conftest import RunningServer, gateway_client, running_server
from tests.fixtures_faults import assert_error, wait_ended
from tests.fixtures_misbehaving import EXPECTED

KINDS = list(EXPECTED)
M = "tests.fixtures_misbehaving"

SERVICES: dict[str, dict[str, Any]] = {
    "echo": {"type": "workflow", "source": "examples.echo:workflow"},
    "wf": {"type": "workflow", "source": f"{M}:workflow"},
    "swf": {"type": "workflow", "source": f"{M}:sync_workflow"},
    "acomp": {"type": "component", "source": f"{M}:async_component"},
    "scomp": {"type": "component", "source": f"{M}:sync_component"},
    "tools": {"type": "tool", "source": f"{M}:tools"},
    "caller": {"type": "agent", "source": f"{M}:tool_agent", "tools": ["tools"]},
    "fragile": {"type": "agent", "source": f"{M}:model_agent"},
    "shuman": {"type": "human", "source": f"{M}:fn_input", "human_input_prompt": "{input_str}"},
    "ahuman": {"type": "human", "source": f"{M}:afn_input", "human_input_prompt": "{input_str}"},
    "custom": {"type": "custom", "source": f"{M}:MisbehavingService"},
}
CONFIG = {"default_service": "echo", "services": SERVICES}

# (service, task input for `kind`): each ends the task failed with EXPECTED[kind] in its error.
TASKS: list[tuple[str, Any]] = [
    *[("wf", lambda k, w=w: {"kind": k, "where": w}) for w in ("step", "thread", "task")],
    ("swf", lambda k: {"kind": k}),
    *[("acomp", lambda k, w=w: {"kind": k, "where": w}) for w in ("step", "thread", "task")],
    ("scomp", lambda k: {"kind": k}),
    *[("tools", lambda k, t=t: {"tool": t, "kwargs": {"kind": k}}) for t in ("sync", "async")],
    ("fragile", lambda k: k),
    ("shuman", lambda k: k),
    ("ahuman", lambda k: k),
    ("custom", lambda k: k),
    ("custom", lambda k: f"{k}@work"),
]


def _task_input(service: str, make: Any, kind: str) -> Any:
    value = make(kind)
    if service == "tools":
        value = {"tool": f"{value['tool']}_misbehave", "kwargs": value["kwargs"]}
        return json.dumps(value)
    return value


async def _assert_serves(client: Any) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).status_code == 200
    response = await client.post("/services/echo/run", json={"kwargs": {"message": "alive"}})
    assert response.json()["status"] == "completed", response.text


@pytest.mark.anyio
@pytest.mark.parametrize("kind", KINDS)
async def test_every_entry_point_fails_its_task_only(kind: str) -> None:
    async with gateway_client(CONFIG) as client:
        submitted = []
        for service, make in TASKS:
            body = {"service": service, "input": _task_input(service, make, kind)}
            response = await client.post("/control_plane/tasks", json=body)
            assert response.status_code == 202, response.text
            submitted.append((service, response.json()["task_id"]))
        for service, task_id in submitted:
            record = await wait_ended(client, task_id)
            assert record["status"] == "failed", (service, record)
            assert EXPECTED[kind] in record["error"], (service, record["error"])
        await _assert_serves(client)


@pytest.mark.anyio
@pytest.mark.parametrize("kind", KINDS)
async def test_tools_fail_the_call_only_over_run_tool_call_bus_and_agent(kind: str) -> None:
    async with gateway_client(CONFIG) as client:
        for tool in ("sync_misbehave", "async_misbehave"):
            run = await client.post(
                "/services/tools/run", json={"tool": tool, "kwargs": {"kind": kind}}
            )
            assert run.status_code == 200, run.text
            assert run.json()["is_error"] is True
            assert EXPECTED[kind] in run.json()["output"]

            call_id = f"call-{tool}-{kind}"
            started = await client.post(
                "/services/tools/tool_call",
                json={
                    "id_": call_id,
                    "tool_call_bundle": {"tool_name": tool, "tool_kwargs": {"kind": kind}},
                },
            )
            assert started.status_code == 202, started.text
            result = await client.get(f"/services/tools/tool_call/{call_id}", params={"wait": 10})
            assert result.status_code == 200, result.text
            assert result.json()["is_error"] is True
            assert EXPECTED[kind] in result.json()["result"]

            # An agent calling the tool over the bus hears the error and still answers.
            response = await client.post(
                "/control_plane/tasks", json={"service": "caller", "input": f"{tool} {kind}"}
            )
            record = await wait_ended(client, response.json()["task_id"])
            assert record["status"] == "completed", record
            assert EXPECTED[kind] in record["result"], record
        await _assert_serves(client)


@pytest.mark.anyio
async def test_a_user_cancelled_error_does_not_shut_the_runtime_down() -> None:
    async with gateway_client(CONFIG, app_out=(apps := [])) as client:
        for service, make in TASKS:
            body = {"service": service, "input": _task_input(service, make, "cancelled")}
            response = await client.post("/control_plane/tasks", json=body)
            await wait_ended(client, response.json()["task_id"])
        runtime = apps[0].state.runtime
        assert runtime.healthy and runtime.ready and runtime.control_plane.accepting
        await _assert_serves(client)


@pytest.mark.anyio
async def test_our_own_cancellation_still_cancels() -> None:
    """A cancel request is ours: the task ends cancelled, not failed with CancelledError."""
    from tests.fixtures_faults import gate, reset_gates, wait_status

    reset_gates()
    cfg = {"services": {"gated": {"type": "workflow", "source": "tests.fixtures_faults:gated"}}}
    async with gateway_client(cfg) as client:
        response = await client.post("/control_plane/tasks", json={"service": "gated"})
        task_id = response.json()["task_id"]
        await wait_status(client, task_id, "running")
        await client.post(f"/control_plane/tasks/{task_id}/cancel")
        record = await wait_ended(client, task_id)
        assert record["status"] == "cancelled"
        with anyio.fail_after(5):  # the run itself was stopped (the gate saw the cancellation)
            while gate("main").cancelled != 1:
                await anyio.sleep(0.01)


# -- against the real server ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(CONFIG, tmp_path_factory.mktemp("containment")) as running:
        yield running


def _wait(client: httpx.Client, task_id: str) -> dict[str, Any]:
    for _ in range(20):
        response = client.get(f"/control_plane/tasks/{task_id}/result", params={"wait": 10})
        if response.status_code == 200:
            return response.json()
    raise AssertionError(f"task {task_id} did not end")


def _assert_alive(server: RunningServer, client: httpx.Client) -> None:
    assert server.process.poll() is None, server.log()[-3000:]
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    response = client.post("/services/echo/run", json={"kwargs": {"message": "alive"}})
    assert response.json()["result"] == "alive"


@pytest.mark.parametrize("kind", KINDS)
def test_real_server_survives_every_entry_point(server: RunningServer, kind: str) -> None:
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        submitted = []
        for service, make in TASKS:
            body = {"service": service, "input": _task_input(service, make, kind)}
            response = client.post("/control_plane/tasks", json=body)
            assert response.status_code == 202, response.text
            submitted.append((service, response.json()["task_id"]))
        for tool in ("sync_misbehave", "async_misbehave"):
            run = client.post("/services/tools/run", json={"tool": tool, "kwargs": {"kind": kind}})
            assert run.json()["is_error"] is True and EXPECTED[kind] in run.json()["output"]
            response = client.post(
                "/control_plane/tasks", json={"service": "caller", "input": f"{tool} {kind}"}
            )
            record = _wait(client, response.json()["task_id"])
            assert record["status"] == "completed" and EXPECTED[kind] in record["result"]
        for service, task_id in submitted:
            record = _wait(client, task_id)
            assert record["status"] == "failed", (service, record)
            assert EXPECTED[kind] in record["error"], (service, record["error"])
        _assert_alive(server, client)


def test_real_server_healthz_fails_once_a_core_loop_died(tmp_path: Path) -> None:
    with (
        running_server(CONFIG, tmp_path) as server,
        httpx.Client(base_url=server.base_url, timeout=30) as client,
    ):
        assert client.get("/healthz").status_code == 200
        assert client.post("/services/custom/break").status_code == 200
        for _ in range(50):
            response = client.get("/healthz")
            if response.status_code == 503:
                break
        assert_error(response, 503)
        assert_error(client.get("/readyz"), 503)


@pytest.mark.anyio
async def test_runs_leave_no_reference_cycles_through_the_containment_wrappers() -> None:
    # A wrapper that re-raises with the exception still bound keeps it in a cycle with its own
    # frame (the traceback holds the frame): every run's cancelled workers, with everything
    # they reference, then waited for the cyclic garbage collector. 104 such objects per /run.
    import gc

    async with gateway_client({"services": {"echo": SERVICES["echo"]}}) as client:

        async def run() -> None:
            answer = await client.post("/services/echo/run", json={"kwargs": {"message": "x"}})
            assert answer.json()["status"] == "completed"

        for _ in range(5):
            await run()
        gc.collect()
        flags = gc.get_debug()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for _ in range(20):
                await run()
            gc.collect()
            ours = [
                o
                for o in gc.garbage
                if type(o).__name__ == "frame" and "/gateway/" in o.f_code.co_filename
            ]
        finally:
            gc.set_debug(flags)
            gc.garbage.clear()
    assert ours == [], [f.f_code.co_name for f in ours]


@pytest.mark.anyio
async def test_a_coroutine_function_handed_to_the_executor_comes_back_contained() -> None:
    """`run_in_executor(None, async_fn)` returns the coroutine the thread made; awaiting it must
    still end in UserCodeError, not SystemExit (the executor converts without a wrapper)."""
    import asyncio

    from gateway.contain import UserCodeError, contained_tasks

    async def exits() -> None:
        raise SystemExit(3)

    with contained_tasks():
        coroutine = await asyncio.get_running_loop().run_in_executor(None, exits)
        with pytest.raises(UserCodeError, match="SystemExit: 3"):
            await coroutine
