"""A service's tasks run in long-lived workers (services.task_workers), not a task each.

What a task spawned with `start_soon` had must hold: every task still runs and ends once, the
limiter still bounds them, they start in the service's context (not the submitter's), a worker
that user code left with a cancellation pending is not reused, a burst leaves few idle workers,
and what is still queued when the workers are cancelled is abandoned, not lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from gateway.messages import ToolCall, ToolCallBundle
from services.task_workers import TaskWorkers
from services.tool.meta_tool import ServiceAsTool
from tests.conftest import gateway_client
from tests.fixtures_workflows import new_probe

pytestmark = pytest.mark.anyio

WHO = contextvars.ContextVar("who", default="nobody")


async def until(condition: Callable[[], bool]) -> None:
    """Wait (at most 5 s) until `condition()` holds."""
    with anyio.fail_after(5):
        while not condition():
            await anyio.sleep(0.01)


async def two_on_one_worker(run: Callable[[int], Any], pause: float, record: list) -> None:
    """Submit item 0, wait `pause` (the worker is idle by then), submit item 1: both must run,
    on the one worker."""
    async with anyio.create_task_group() as tg:
        workers = TaskWorkers(run, tg, "test", max_idle=4)
        workers.submit(0)
        await anyio.sleep(pause)
        workers.submit(1)
        await until(lambda: len(record) >= 2)
        assert workers.workers == 1
        tg.cancel_scope.cancel()


def service_of(app: Any, name: str) -> Any:
    return app.state.runtime.services[name]


async def test_runs_one_after_another_reuse_one_worker() -> None:
    apps: list[Any] = []
    config = {"services": {"echo": {"type": "workflow", "source": "examples.echo:workflow"}}}
    async with gateway_client(config, app_out=apps) as client:
        tasks_before = len(asyncio.all_tasks())
        for n in range(20):
            answer = await client.post("/services/echo/run", json={"kwargs": {"message": f"{n}"}})
            assert answer.json()["result"] == f"{n}"
        workers = service_of(apps[0], "echo")._workers
        assert (workers.workers, workers.idle) == (1, 1)
        assert len(asyncio.all_tasks()) <= tasks_before + 1  # the one worker, nothing per run


async def test_a_burst_runs_under_the_limiter_and_leaves_at_most_max_idle_workers() -> None:
    probe = new_probe()
    apps: list[Any] = []
    gated = {"type": "workflow", "source": "tests.fixtures_workflows:gated"}
    config = {"services": {"gated": {**gated, "max_concurrent_tasks": 3}}}
    async with gateway_client(config, app_out=apps) as client:
        ids = []
        for n in range(12):
            accepted = await client.post(
                "/control_plane/tasks", json={"service": "gated", "input": {"n": n}}
            )
            ids.append(accepted.json()["task_id"])
        with anyio.fail_after(5):
            await probe.started_event(3).wait()
        workers = service_of(apps[0], "gated")._workers
        assert workers.workers == 12 and probe.running == 3  # the limiter, not the workers
        probe.release.set()
        ends = [
            (await client.get(f"/control_plane/tasks/{i}/result", params={"wait": 5})).json()
            for i in ids
        ]
        assert [e["status"] for e in ends] == ["completed"] * 12
        assert probe.max_running == 3 and probe.finished == 12
        assert workers.workers == workers.idle <= 3  # max_idle: min(max_concurrent_tasks, 64)


async def test_a_task_starts_in_the_services_context_not_the_submitters() -> None:
    seen: list[str] = []

    async def run(item: str) -> None:
        seen.append(f"{item}:{WHO.get()}")

    async with anyio.create_task_group() as tg:
        WHO.set("host")
        workers = TaskWorkers(run, tg, "test", max_idle=4)
        token = WHO.set("a request")
        workers.submit("first")
        workers.submit("second")
        WHO.reset(token)
        await until(lambda: len(seen) >= 2)
        tg.cancel_scope.cancel()
    assert seen == ["first:host", "second:host"]


async def swallow_a_cancel_of_its_own_task(task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(0)


async def leave_two_cancel_timers(task: asyncio.Task) -> None:
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, task.cancel)
    loop.call_later(0.05, task.cancel)  # the same turn, on the idle worker: count 2


@pytest.mark.parametrize(
    "leave_a_count", [swallow_a_cancel_of_its_own_task, leave_two_cancel_timers]
)
async def test_a_cancel_count_left_by_a_task_is_cleared_before_the_next(
    leave_a_count: Callable[[asyncio.Task], Any],
) -> None:
    """User code that cancels its own task (now the worker) and swallows the CancelledError,
    or timers it leaves that cancel the idle worker, raise the task's cancel count: the next
    task would take its own CancelledError for a cancellation of the gateway's."""
    counts: list[int] = []

    async def run(item: int) -> None:
        task = asyncio.current_task()
        assert task is not None
        counts.append(task.cancelling())
        if item == 0:
            await leave_a_count(task)

    await two_on_one_worker(run, 0.2, counts)
    assert counts == [0, 0]


async def test_a_self_cancelling_component_does_not_spoil_the_next_task() -> None:
    config = {
        "services": {
            "comp": {
                "type": "component",
                "source": "tests.fixtures_misbehaving:self_cancelling_component",
                "max_concurrent_tasks": 1,
            }
        }
    }
    async with gateway_client(config) as client:
        first = await client.post("/services/comp/run", json={"kwargs": {"kind": "swallow"}})
        second = await client.post("/services/comp/run", json={"kwargs": {"kind": "cancelled"}})
        third = await client.post("/services/comp/run", json={"kwargs": {"kind": "none"}})
    assert first.json()["status"] == "completed", first.text
    assert second.json()["status"] == "failed", second.text
    assert "CancelledError: mine" in second.json()["error"]
    assert third.json()["status"] == "completed", third.text


async def test_every_item_submitted_before_a_shutdown_runs_or_is_abandoned() -> None:
    ran: list[int] = []
    abandoned: list[int] = []

    async def run(item: int) -> None:
        ran.append(item)
        await anyio.sleep_forever()

    async def abandon(item: int) -> None:
        abandoned.append(item)

    async with anyio.create_task_group() as tg:
        workers = TaskWorkers(run, tg, "test", max_idle=4, abandon=abandon)
        workers.submit(0)
        await anyio.sleep(0.01)
        for item in (1, 2, 3):
            workers.submit(item)
        tg.cancel_scope.cancel()
    assert sorted(ran + abandoned) == [0, 1, 2, 3] and not set(ran) & set(abandoned)
    assert workers.workers == 0


async def test_a_stray_cancel_of_an_idle_worker_is_dropped_and_loses_nothing() -> None:
    """A timer user code forgot (it cancels "its own" task, long after that task ended) lands
    on an idle worker: the worker carries on, and the gateway's task group is not cancelled."""
    ran: list[int] = []

    async def run(item: int) -> None:
        if item == 0:
            me = asyncio.current_task()
            asyncio.get_running_loop().call_later(0.05, me.cancel)  # type: ignore[union-attr]
        ran.append(item)

    await two_on_one_worker(run, 0.2, ran)  # the timer fires while the worker waits for work
    assert ran == [0, 1]


async def test_a_task_that_cancels_its_worker_ends_and_the_worker_carries_on() -> None:
    abandoned: list[int] = []
    ran: list[int] = []

    async def run(item: int) -> None:
        ran.append(item)
        if item == 0:
            asyncio.current_task().cancel()  # type: ignore[union-attr]
            await asyncio.sleep(0)

    async def abandon(item: int) -> None:
        abandoned.append(item)

    async with anyio.create_task_group() as tg:
        workers = TaskWorkers(run, tg, "test", max_idle=4, abandon=abandon)
        workers.submit(0)
        workers.submit(1)
        await until(lambda: len(ran) >= 2)
        tg.cancel_scope.cancel()
    assert ran == [0, 1] and abandoned == [0]


async def test_context_variables_set_by_one_task_never_reach_the_next() -> None:
    seen: list[str] = []

    async def run(item: str) -> None:
        seen.append(WHO.get())
        WHO.set(item)
        await anyio.sleep(0)

    async with anyio.create_task_group() as tg:
        workers = TaskWorkers(run, tg, "test", max_idle=4)
        for n, name in enumerate(("alice", "bob", "carol")):
            workers.submit(name)
            await until(lambda n=n: len(seen) > n)
        assert workers.workers == 1  # one worker ran all three
        tg.cancel_scope.cancel()
    assert seen == ["nobody"] * 3


def components(**sources: str) -> dict[str, Any]:
    entries = {
        name: {"type": "component", "source": f"tests.fixtures_misbehaving:{function}"}
        for name, function in sources.items()
    }
    entries["echo"] = {"type": "workflow", "source": "examples.echo:workflow"}
    return {"services": entries}


async def test_a_context_variable_one_task_sets_is_not_seen_by_the_next() -> None:
    """Found by review: a component runs in the worker's own task; each task gets its own
    copy of the service's context, or one user's value would reach the next user's task."""
    async with gateway_client(components(comp="who_am_i")) as client:
        first = await client.post("/services/comp/run", json={"kwargs": {"user": "alice"}})
        second = await client.post("/services/comp/run", json={"kwargs": {"user": "bob"}})
    assert first.json()["result"] == "nobody", first.text
    assert second.json()["result"] == "nobody", second.text


async def test_a_forgotten_cancel_timer_of_a_finished_task_harms_nothing() -> None:
    """Found by review: the timer fires on the idle worker the task ran in."""
    async with gateway_client(components(comp="forgetful_watchdog")) as client:
        first = await client.post("/services/comp/run", json={"kwargs": {"delay": 0.1}})
        await anyio.sleep(0.3)  # the timer fires
        second = await client.post("/services/comp/run", json={"kwargs": {"delay": 5}})
        echo = await client.post("/services/echo/run", json={"kwargs": {"message": "x"}})
        health = await client.get("/healthz")
    assert first.json()["status"] == "completed", first.text
    assert second.json()["status"] == "completed", second.text
    assert echo.json()["result"] == "x" and health.status_code == 200


@pytest.mark.parametrize("kind", ["propagate", "noawait"])
async def test_code_that_cancels_its_own_task_ends_only_that_task(kind: str) -> None:
    """Before workers, this cancelled the gateway's whole task group (found by review)."""
    async with gateway_client(components(comp="self_cancel")) as client:
        with anyio.fail_after(5):
            first = await client.post("/services/comp/run", json={"kwargs": {"kind": kind}})
        await anyio.sleep(0.05)
        echo = await client.post("/services/echo/run", json={"kwargs": {"message": "x"}})
        again = await client.post("/services/comp/run", json={"kwargs": {"kind": "swallow"}})
    assert first.json()["status"] in ("cancelled", "completed"), first.text
    assert echo.json()["result"] == "x", echo.text
    assert again.status_code == 200 and again.json()["status"] != "running", again.text


async def test_a_service_called_as_a_tool_that_cancels_its_task_answers_its_caller() -> None:
    """Found by review: the caller (an agent's ServiceAsTool) must hear that the task ended,
    not wait for its own timeout."""
    apps: list[Any] = []
    async with gateway_client(components(comp="self_cancel"), app_out=apps):
        runtime = apps[0].state.runtime
        tool = ServiceAsTool.from_service(runtime.services["comp"], runtime.bus, timeout=10)
        with anyio.fail_after(5):
            output = await tool.acall(input='{"kind": "propagate"}')
    assert output.is_error and "cancelled by its own code" in output.content, output.content


async def test_with_tracing_on_code_that_cancels_its_own_task_ends_only_that_task() -> None:
    """Traced tasks keep a task of their own (start_soon); a bare cancel escaping one used to
    cancel the host task group (found by review)."""
    config = components(comp="self_cancel")
    config["tracing"] = {"enabled": True, "exporter": "none"}
    async with gateway_client(config) as client:
        with anyio.fail_after(5):
            first = await client.post("/services/comp/run", json={"kwargs": {"kind": "propagate"}})
            await anyio.sleep(0.05)
            echo = await client.post("/services/echo/run", json={"kwargs": {"message": "x"}})
    assert first.json()["status"] == "cancelled", first.text
    assert echo.json()["result"] == "x", echo.text


async def test_the_tool_pools_workers_give_each_call_its_own_context_and_survive_a_cancel() -> None:
    """Tool calls that came as JSON run in the tool service's WorkerPool, long-lived workers
    too: the same per-call context and the same containment of a bare task.cancel()."""
    config = {
        "services": {
            "kit": {
                "type": "tool",
                "source": "tests.fixtures_misbehaving:worker_tools",
                "max_concurrent_calls": 1,  # one worker: every call below runs on it
            }
        }
    }

    async def call(client: Any, tool: str, **kwargs: Any) -> dict[str, Any]:
        body = ToolCall(tool_call_bundle=ToolCallBundle(tool_name=tool, tool_kwargs=kwargs))
        accepted = await client.post("/services/kit/tool_call", json=body.model_dump())
        assert accepted.status_code == 202, accepted.text
        done = await client.get(f"/services/kit/tool_call/{body.id_}", params={"wait": 5})
        return done.json()

    async with gateway_client(config) as client:
        with anyio.fail_after(10):
            alice = await call(client, "who_am_i", user="alice")
            bob = await call(client, "who_am_i", user="bob")
            cancelled = await call(client, "self_cancel")
            after = await call(client, "who_am_i", user="carol")
    assert (alice["result"], bob["result"], after["result"]) == ("nobody",) * 3
    assert cancelled["is_error"] and "cancelled" in cancelled["result"], cancelled
