"""Back-pressure: past `max_queued_tasks` (or with a full bus) new tasks get 503 + Retry-After.

Nothing accepted is lost: every 202 ends `completed`, every refusal is a 503 with Retry-After,
and the process's memory stays bounded however long the burst.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import anyio
import pytest

from gateway.control_plane.tasks import TaskRecord
from tests.conftest import gateway_client
from tests.fixtures_faults import assert_error, gate, reset_gates, wait_ended

pytestmark = pytest.mark.anyio

ECHO = {"type": "workflow", "source": "examples.echo:workflow"}


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def assert_refused(response) -> None:
    body = assert_error(response, 503)
    assert body["error"] == "service_unavailable"
    assert int(response.headers["retry-after"]) >= 1


async def test_past_max_queued_tasks_new_tasks_get_503_with_retry_after() -> None:
    reset_gates()
    cfg = {
        "default_service": "echo",
        "services": {
            "echo": ECHO,
            "slow": {
                "type": "workflow",
                "source": "tests.fixtures_faults:gated",
                "max_concurrent_tasks": 2,
                "max_queued_tasks": 5,
            },
        },
    }
    async with gateway_client(cfg) as client:
        accepted = []
        for n in range(5):  # 2 running + 3 waiting for a slot: all count as queued
            response = await client.post(
                "/control_plane/tasks", json={"service": "slow", "input": {"n": n}}
            )
            assert response.status_code == 202, response.text
            accepted.append(response.json()["task_id"])
        with anyio.fail_after(5):
            await gate("main").reached(2).wait()

        refused = await client.post("/control_plane/tasks", json={"service": "slow"})
        assert_refused(refused)
        assert "5 tasks queued" in refused.json()["detail"]
        assert_refused(await client.post("/services/slow/run", json={"kwargs": {}}))
        # The limit is per service: another one accepts at once.
        other = await client.post("/services/echo/run", json={"kwargs": {"message": "hi"}})
        assert other.json()["status"] == "completed"

        gate("main").opened.set()
        for n, task_id in enumerate(accepted):
            record = await wait_ended(client, task_id)
            assert record["status"] == "completed"
            assert record["result"] == {"n": n}
        # Room again once the queue drained.
        again = await client.post("/control_plane/tasks", json={"service": "slow", "input": {}})
        assert again.status_code == 202
        assert (await wait_ended(client, again.json()["task_id"]))["status"] == "completed"


async def burst(client, count: int, clients: int) -> tuple[list[str], int]:
    """`count` submissions from `clients` concurrent clients: (accepted ids, refused count)."""
    accepted: list[str] = []
    refused = 0
    limiter = anyio.CapacityLimiter(clients)

    async def one(n: int) -> None:
        nonlocal refused
        async with limiter:
            response = await client.post(
                "/control_plane/tasks", json={"service": "slow", "input": {"seconds": 0.002}}
            )
        if response.status_code == 202:
            accepted.append(response.json()["task_id"])
        else:
            assert_refused(response)
            refused += 1

    async with anyio.create_task_group() as group:
        for n in range(count):
            group.start_soon(one, n)
    return accepted, refused


async def test_a_burst_of_1000_loses_nothing_and_memory_stays_bounded() -> None:
    max_queued, retain = 25, 200
    cfg = {
        "default_service": "slow",
        "retain_finished_tasks": retain,
        "services": {
            "slow": {
                "type": "workflow",
                "source": "tests.fixtures_faults:nap",
                "max_concurrent_tasks": 4,
                "max_queued_tasks": max_queued,
            }
        },
    }
    apps: list = []
    async with gateway_client(cfg, app_out=apps) as client:
        control_plane = apps[0].state.runtime.control_plane
        ended: dict[str, str] = {}
        expected: set[str] = set()
        all_ended = anyio.Event()

        def on_end(record: TaskRecord) -> None:
            ended[record.task_id] = record.status.value
            if expected and expected <= ended.keys():
                all_ended.set()

        control_plane.on_task_end.append(on_end)

        async def one_burst() -> tuple[int, int]:
            nonlocal all_ended
            ended.clear()
            expected.clear()
            all_ended = anyio.Event()
            accepted, refused = await burst(client, 1000, clients=8)
            assert len(accepted) + refused == 1000
            assert len(set(accepted)) == len(accepted)
            expected.update(accepted)
            if expected <= ended.keys():
                all_ended.set()
            with anyio.fail_after(60):
                await all_ended.wait()
            # Every accepted task completed (none failed, none lost), and nothing else ran.
            assert set(ended) == expected
            assert set(ended.values()) == {"completed"}
            assert control_plane.tasks.active_count() == 0
            return len(accepted), refused

        accepted, refused = await one_burst()  # warm-up: imports, caches, allocator pools
        assert refused > 0, "the burst never hit max_queued_tasks: no back-pressure tested"
        assert accepted >= max_queued
        gc.collect()
        before = rss_bytes()
        for _ in range(2):
            accepted, refused = await one_burst()
            assert refused > 0 and accepted >= max_queued
        gc.collect()
        grown = rss_bytes() - before
        # What is kept is bounded by configuration, not by how many tasks ever came.
        assert len(control_plane.tasks) <= retain + max_queued
        assert control_plane.events.subscriber_count == 0
        assert len(control_plane.events._channels) <= control_plane.events.retain_closed
        assert grown < 40 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB over 2000 submissions"

        metrics = (await client.get("/metrics")).text
        assert 'gateway_tasks_total{service="slow",status="failed"}' not in metrics


async def test_a_full_bus_refuses_a_burst_with_503_and_delivers_everything_accepted() -> None:
    reset_gates()
    cfg: dict[str, Any] = {
        "default_service": "echo",
        "bus": {"buffer_size": 4, "publish_timeout": 0.05},
        "services": {
            "echo": ECHO,
            "stuck": {"type": "custom", "source": "tests.fixtures_faults:StuckService"},
        },
    }
    async with gateway_client(cfg) as client:
        first = await client.post("/control_plane/tasks", json={"service": "stuck"})
        assert first.status_code == 202
        with anyio.fail_after(5):
            await gate("stuck").reached(1).wait()  # the consumer is now blocked in its handler

        accepted: list[str] = [first.json()["task_id"]]
        refused = 0

        async def one() -> None:
            nonlocal refused
            response = await client.post("/control_plane/tasks", json={"service": "stuck"})
            if response.status_code == 202:
                accepted.append(response.json()["task_id"])
            else:
                assert_refused(response)
                assert "full" in response.json()["detail"]
                refused += 1

        async with anyio.create_task_group() as group:
            for _ in range(40):
                group.start_soon(one)
        assert len(accepted) == 1 + 4  # the one in the handler plus a full buffer
        assert refused == 40 - 4

        # The gateway keeps serving while that bus lane is full.
        assert (await client.get("/readyz")).status_code == 200
        ok = await client.post("/services/echo/run", json={"kwargs": {"message": "alive"}})
        assert ok.json()["result"] == "alive"

        gate("stuck").opened.set()
        for task_id in accepted:
            record = await wait_ended(client, task_id)
            assert record["status"] == "completed"
            assert record["result"] == "unstuck"
        listed = (await client.get("/control_plane/tasks", params={"service": "stuck"})).json()
        assert listed["total"] == len(accepted)  # refused tasks left nothing behind
