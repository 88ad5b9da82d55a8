"""Redis mode: the deployment-wide views. Task and session lists, a session's current task and
the aggregate feed answer for every replica; deleting or resetting a session takes effect on
every replica. Real redis-server; each test its own namespace. A missing Redis fails them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.conftest import gateway_client
from tests.redis_helpers import SECRET, clean_namespace, redis_config, replicas

pytestmark = pytest.mark.anyio

ECHO = {"type": "workflow", "source": "examples.echo:workflow"}
COUNTER = {"type": "workflow", "source": "examples.counter:workflow"}
SLOW = {"type": "workflow", "source": "tests.fixtures_workflows:slow", "max_concurrent_tasks": 4}


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_SECRET", SECRET)


async def _page_all(client: httpx.AsyncClient, path: str, **params: Any) -> list[str]:
    """Every id of a list, page by page (limit 3) through `next`."""
    ids: list[str] = []
    after = None
    while True:
        query = {**params, "limit": 3, **({"after": after} if after else {})}
        page = (await client.get(path, params=query)).json()
        ids += [item.get("task_id") or item.get("session_id") for item in page["items"]]
        after = page["next"]
        if after is None:
            return ids


def _expected(tasks: list[dict], sort: str, descending: bool, **match: Any) -> list[str]:
    kept = [t for t in tasks if all(t[k] == v for k, v in match.items())]
    kept.sort(key=lambda t: (t[sort] or 0.0, t["task_id"]), reverse=descending)
    return [t["task_id"] for t in kept]


async def test_the_task_list_pages_filters_and_sorts_as_in_one_process() -> None:
    with clean_namespace() as namespace:
        config = redis_config(namespace, {"echo": ECHO, "slow": {**SLOW, "max_queued_tasks": 50}})
        async with gateway_client(config) as client:
            session = (await client.post("/control_plane/sessions")).json()["session_id"]
            for n in range(5):
                body = {"kwargs": {"message": f"m{n}"}}
                assert (await client.post("/services/echo/run", json=body)).status_code == 200
            queued = []
            for _ in range(4):  # pending (one at a time per session lane), then cancelled
                body = {"service": "slow", "input": {"seconds": 30}, "session_id": session}
                queued.append((await client.post("/control_plane/tasks", json=body)).json())
            await client.post(f"/control_plane/tasks/{queued[-1]['task_id']}/cancel")
            ids = [t["task_id"] for t in (await client.get("/control_plane/tasks")).json()["items"]]
            tasks = [(await client.get(f"/control_plane/tasks/{i}")).json() for i in ids]
            assert len(tasks) == 9
            for sort in ("created_at", "started_at", "finished_at"):
                for order in ("desc", "asc"):
                    got = await _page_all(client, "/control_plane/tasks", sort=sort, order=order)
                    assert got == _expected(tasks, sort, order == "desc"), (sort, order)
            for match in ({"service": "slow"}, {"status": "completed"}, {"session_id": session}):
                got = await _page_all(client, "/control_plane/tasks", **match)
                assert got == _expected(tasks, "created_at", True, **match), match
            both = {"service": "slow", "status": "cancelled"}
            listed = (await client.get("/control_plane/tasks", params=both)).json()
            assert listed["total"] == 1 and listed["items"][0]["task_id"] == queued[-1]["task_id"]
            offset = (await client.get("/control_plane/tasks", params={"offset": 7})).json()
            assert [t["task_id"] for t in offset["items"]] == ids[7:] and offset["total"] == 9
            current = (await client.get(f"/control_plane/sessions/{session}/current_task")).json()
            assert current["task_id"] == queued[0]["task_id"]
            listed_tasks = (await client.get(f"/control_plane/sessions/{session}/tasks")).json()
            assert [t["task_id"] for t in listed_tasks] == [q["task_id"] for q in queued]
            for task in queued[:-1]:
                await client.post(f"/control_plane/tasks/{task['task_id']}/cancel")


async def _feed(base: str, into: list[dict], ready: anyio.Event) -> None:
    """Collect the aggregate feed of one replica (its `data:` payloads) until cancelled."""
    async with (
        httpx.AsyncClient(timeout=None) as client,
        client.stream("GET", f"{base}/control_plane/events") as response,
    ):
        ready.set()
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                into.append(json.loads(line[6:]))


@asynccontextmanager
async def _following(base: str) -> AsyncIterator[list[dict]]:
    frames: list[dict] = []
    async with anyio.create_task_group() as group:
        ready = anyio.Event()
        group.start_soon(_feed, base, frames, ready)
        await ready.wait()
        yield frames
        group.cancel_scope.cancel()


async def _until(check: Any, timeout: float = 15) -> None:
    with anyio.fail_after(timeout):
        while not await check():
            await anyio.sleep(0.05)


async def test_every_replica_lists_feeds_and_deletes_for_the_whole_deployment(
    tmp_path: Path,
) -> None:
    services = {"echo": ECHO, "counter": COUNTER, "slow": SLOW}
    with clean_namespace() as namespace:
        config = redis_config(namespace, services, claim_idle=1.5)
        # A hosts echo and counter, B only slow: a slow task accepted by A runs in B.
        with replicas(config, tmp_path, "echo,counter", "slow") as (a, b):
            async with httpx.AsyncClient(timeout=30) as client:

                async def discovered() -> bool:  # by both: each hosts only some services
                    for base in (a.url, b.url):
                        found = (await client.get(f"{base}/control_plane/services")).json()
                        if set(found) != set(services):
                            return False
                    return True

                await _until(discovered)
                async with _following(a.url) as feed:
                    made = await client.post(f"{b.url}/control_plane/sessions")
                    session = made.json()["session_id"]
                    body = {"service": "slow", "input": {"seconds": 60}, "session_id": session}
                    slow = (await client.post(f"{a.url}/control_plane/tasks", json=body)).json()
                    slow_id = slow["task_id"]

                    async def running() -> bool:
                        task = await client.get(f"{a.url}/control_plane/tasks/{slow_id}")
                        return task.json()["status"] == "running"

                    await _until(running)
                    # A's feed tells of a task that B runs, with positions shared by replicas.
                    seen = lambda: [f["status"] for f in feed if f["task_id"] == slow_id]  # noqa: E731

                    async def fed() -> bool:
                        return seen() == ["pending", "running"]

                    await _until(fed)
                    assert feed[-1]["data"]["service"] == "slow"
                    echoed = []
                    for base in (a.url, b.url, a.url):  # echo runs in A whoever accepts it
                        run = {"kwargs": {"message": "x"}}
                        done = await client.post(f"{base}/services/echo/run", json=run)
                        assert done.json()["status"] == "completed", done.text
                        echoed.append(done.json()["task_id"])
                    # Both replicas list the same four tasks, newest first, and page them.
                    expected = [*reversed(echoed), slow_id]
                    for base in (a.url, b.url):
                        listed = (await client.get(f"{base}/control_plane/tasks")).json()
                        assert [t["task_id"] for t in listed["items"]] == expected
                        assert listed["total"] == 4
                        assert await _page_all(client, f"{base}/control_plane/tasks") == expected
                        paged = f"{base}/control_plane/sessions/list"
                        sessions = (await client.get(paged)).json()
                        assert [s["session_id"] for s in sessions["items"]] == [session]
                        compat = (await client.get(f"{base}/control_plane/sessions")).json()
                        assert list(compat) == [session]
                        current = await client.get(
                            f"{base}/control_plane/sessions/{session}/current_task"
                        )
                        assert current.json()["task_id"] == slow_id
                    # Deleting the session on A cancels its task running in B.
                    deleted = await client.delete(f"{a.url}/control_plane/sessions/{session}")
                    assert deleted.json()["cancelled"] == [slow_id], deleted.text
                    ended = await client.get(f"{b.url}/control_plane/tasks/{slow_id}")
                    assert ended.json()["status"] == "cancelled"
                    gone = await client.get(f"{b.url}/control_plane/sessions/{session}")
                    assert gone.status_code == 404
                    refused = await client.post(f"{b.url}/control_plane/tasks", json=body)
                    assert refused.status_code == 404, refused.text

                    async def fed_end() -> bool:
                        return seen() == ["pending", "running", "cancelled"]

                    await _until(fed_end)
                    positions = [f["seq"] for f in feed]
                    assert positions == list(range(positions[0], positions[0] + len(feed)))
                    # Resuming on B after a position A's feed gave: the same entries follow.
                    resume_at = feed[1]["seq"]
                    async with client.stream(
                        "GET",
                        f"{b.url}/control_plane/events",
                        headers={"Last-Event-ID": str(resume_at)},
                    ) as response:
                        replay = []
                        async for line in response.aiter_lines():
                            if line.startswith("data: "):
                                replay.append(json.loads(line[6:]))
                                if len(replay) == len(feed) - 2:
                                    break
                    assert replay == feed[2:]

                # A session reset on B takes effect for the counter that A runs.
                made = await client.post(f"{a.url}/control_plane/sessions")
                counted = made.json()["session_id"]
                turns = []
                for base in (a.url, b.url):
                    task = {"service": "counter", "input": {}, "session_id": counted}
                    accepted = await client.post(f"{base}/control_plane/tasks", json=task)
                    task_id = accepted.json()["task_id"]
                    final = await client.get(
                        f"{a.url}/control_plane/tasks/{task_id}/result?wait=20"
                    )
                    turns.append(final.json()["result"]["turns"])
                assert turns == [1, 2]
                reset = await client.post(f"{b.url}/control_plane/sessions/{counted}/reset")
                assert reset.status_code == 200, reset.text
                task = {"service": "counter", "input": {}, "session_id": counted}
                again = await client.post(f"{b.url}/control_plane/tasks", json=task)
                final = await client.get(
                    f"{a.url}/control_plane/tasks/{again.json()['task_id']}/result?wait=20"
                )
                assert final.json()["result"]["turns"] == 1, final.text
