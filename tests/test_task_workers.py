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
from typing import Any

import anyio
import pytest

from services.task_workers import TaskWorkers
from tests.conftest import gateway_client
from tests.fixtures_workflows import new_probe

pytestmark = pytest.mark.anyio

WHO = contextvars.ContextVar("who", default="nobody")


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
        with anyio.fail_after(5):
            while len(seen) < 2:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert seen == ["first:host", "second:host"]


async def test_a_worker_left_with_a_cancel_pending_is_not_reused() -> None:
    """User code that cancels its own task and swallows the CancelledError leaves the task's
    cancel count raised; reused, the worker would take the next task's own CancelledError for
    a cancellation of the gateway's and let it escape."""
    ran: list[Any] = []

    async def run(item: int) -> None:
        ran.append(asyncio.current_task())  # kept: an id could be reused
        if item == 0:
            asyncio.current_task().cancel()  # type: ignore[union-attr]
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0)

    async with anyio.create_task_group() as tg:
        workers = TaskWorkers(run, tg, "test", max_idle=4)
        workers.submit(0)
        with anyio.fail_after(5):
            while workers.workers:
                await anyio.sleep(0.01)  # the worker retired instead of waiting for more
        workers.submit(1)
        with anyio.fail_after(5):
            while len(ran) < 2:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert ran[0] is not ran[1]


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


async def test_items_still_queued_when_the_workers_are_cancelled_are_abandoned() -> None:
    started = anyio.Event()
    abandoned: list[int] = []

    async def run(item: int) -> None:
        started.set()
        await anyio.sleep_forever()

    async def abandon(item: int) -> None:
        abandoned.append(item)

    async with anyio.create_task_group() as tg:
        workers = TaskWorkers(run, tg, "test", max_idle=4, abandon=abandon)
        workers.submit(0)
        with anyio.fail_after(5):
            await started.wait()
        workers.idle = 0  # as if the items below were promised to workers not yet running
        workers._send.send_nowait(1)
        workers._send.send_nowait(2)
        tg.cancel_scope.cancel()
    assert abandoned == [1, 2] and workers.workers == 0
