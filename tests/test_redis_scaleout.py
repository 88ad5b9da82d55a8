"""One deployment across processes on Redis: real replica processes, a real redis-server.

Each test uses its own namespace (deleted afterwards). A missing Redis fails these tests.
"""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path

import anyio
import httpx
import pytest
import redis

from tests.redis_helpers import (
    REDIS_URL,
    PrivateRedis,
    clean_namespace,
    redis_config,
    replicas,
    start_replica,
    stop,
    wait_ready,
)

pytestmark = pytest.mark.anyio

SLOW = {
    "type": "workflow",
    "source": "tests.fixtures_workflows:slow",
    "max_concurrent_tasks": 16,
    "max_queued_tasks": 2000,
}


async def _submit(client: httpx.AsyncClient, base: str, body: dict) -> str | None:
    """The task id if the replica answered 202, else None (refused, or the replica is dead)."""
    try:
        response = await client.post(f"{base}/control_plane/tasks", json=body, timeout=10)
    except httpx.HTTPError:
        return None
    return response.json()["task_id"] if response.status_code == 202 else None


async def _final(client: httpx.AsyncClient, base: str, task_id: str, wait: float = 30) -> dict:
    response = await client.get(f"{base}/control_plane/tasks/{task_id}/result?wait={wait}")
    return response.json()


async def test_two_replicas_one_killed_every_accepted_task_ends_exactly_once(
    tmp_path: Path,
) -> None:
    with clean_namespace() as namespace:
        config = redis_config(namespace, {"slow": SLOW}, claim_idle=1.5, max_deliveries=3)
        with replicas(config, tmp_path, None, None) as (a, b):
            accepted: list[str] = []
            killed = anyio.Event()
            async with httpx.AsyncClient() as client:

                async def submit_range(start: int) -> None:
                    for i in range(start, 500, 20):
                        if i == 250 and not killed.is_set():
                            b.process.send_signal(signal.SIGKILL)  # mid-load, tasks in flight
                            killed.set()
                        base = (a, b)[i % 2].url
                        body = {"input": {"seconds": 0.2}, "service": "slow"}
                        task_id = await _submit(client, base, body)
                        if task_id is not None:
                            accepted.append(task_id)

                async with anyio.create_task_group() as group:
                    for start in range(20):
                        group.start_soon(submit_range, start)
                assert b.process.wait(timeout=5) == -signal.SIGKILL

                finals: dict[str, dict] = {}

                async def collect(ids: list[str]) -> None:
                    for task_id in ids:
                        finals[task_id] = await _final(client, a.url, task_id)

                with anyio.fail_after(60):
                    async with anyio.create_task_group() as group:
                        for k in range(16):
                            group.start_soon(collect, accepted[k::16])

        # Exactly one terminal transition per task: the finish script writes one result event.
        store = redis.Redis.from_url(REDIS_URL, decode_responses=True)
        results = Counter()
        for task_id in accepted:
            events = store.xrange(f"gw:{namespace}:ev:{task_id}")
            results[task_id] = sum(1 for _, f in events if json.loads(f["e"])["kind"] == "result")
        store.close()
        statuses = Counter(f["status"] for f in finals.values())
        twice = [t for t, n in results.items() if n > 1]
        lost = [t for t in accepted if finals.get(t, {}).get("status") not in _TERMINAL]
        print(
            f"\n202 accepted: {len(accepted)} (of 500 sent; the rest went to the killed replica)"
            f"\nterminal states: {dict(statuses)}"
            f"\nended twice: {len(twice)}  lost: {len(lost)}"
        )
        taken_over = a.log().count("took over entry")
        print(f"entries taken over from the killed replica: {taken_over}")
        assert taken_over > 0  # B died with work in flight (0.2 s tasks), and A finished it
        assert len(accepted) >= 250
        assert len(set(accepted)) == len(accepted)
        assert lost == [] and twice == []
        assert all(results[t] == 1 for t in accepted)
        assert statuses == {"completed": len(accepted)}


_TERMINAL = {"completed", "failed", "cancelled", "timed_out"}


async def _settled(client: httpx.AsyncClient, base: str, task_id: str) -> dict:
    """The final record, retrying a 503 after its Retry-After as a client would (right after
    Redis comes back, a request may still meet it reloading)."""
    for _ in range(10):
        response = await client.get(f"{base}/control_plane/tasks/{task_id}/result?wait=30")
        if response.status_code != 503:
            return response.json()
        await anyio.sleep(float(response.headers.get("Retry-After", "1")))
    return response.json()


async def test_service_only_in_b_is_used_from_a_by_run_and_by_the_agent(tmp_path: Path) -> None:
    services = {
        "echo": {"type": "workflow", "source": "examples.echo:workflow"},
        "calculator": {"type": "tool", "source": "examples.tools:tools"},
        "assistant": {
            "type": "agent",
            "source": "examples.agent:build_agent",
            "tools": ["calculator"],
        },
    }
    with clean_namespace() as namespace:
        config = redis_config(namespace, services, claim_idle=1.5)  # adverts live 2 s
        with replicas(config, tmp_path, "assistant", "echo,calculator") as (a, b):
            async with httpx.AsyncClient(base_url=a.url, timeout=30) as client:
                with anyio.fail_after(15):  # discovery: B's advert reaches A
                    while set((await client.get("/control_plane/services")).json()) != set(
                        services
                    ):
                        await anyio.sleep(0.1)
                assert (await client.get(f"{b.url}/control_plane/services")).status_code == 200
                run = await client.post("/services/echo/run", json={"kwargs": {"message": "hi"}})
                assert run.status_code == 200, run.text
                assert run.json()["status"] == "completed" and run.json()["result"] == "hi"
                # The agent in A calls the calculator's tools, which only B hosts.
                asked = await client.post(
                    "/services/assistant/run", json={"input": "What is (3+4)*5?"}
                )
                assert asked.status_code == 200, asked.text
                assert asked.json()["result"] == "The answer is 35.", asked.text
                history = asked.json()["history"]
                calls = [
                    c["name"] for m in history for c in m["additional_kwargs"].get("tool_calls", [])
                ]
                assert calls == ["add", "multiply"]
                # A does not host the calculator: no route of it here, only discovery.
                assert (await client.post("/services/calculator/run", json={})).status_code == 404
            b.process.send_signal(signal.SIGKILL)
            async with httpx.AsyncClient(base_url=a.url, timeout=30) as client:
                with anyio.fail_after(10):  # B's advert expires: echo is no longer discovered
                    while "echo" in (await client.get("/control_plane/services")).json():
                        await anyio.sleep(0.2)


async def test_session_counts_in_order_across_replicas(tmp_path: Path) -> None:
    services = {"counter": {"type": "workflow", "source": "examples.counter:workflow"}}
    with clean_namespace() as namespace:
        config = redis_config(namespace, services)
        with replicas(config, tmp_path, None, None) as pair:
            async with httpx.AsyncClient(timeout=30) as client:
                created = await client.post(f"{pair[0].url}/control_plane/sessions")
                session_id = created.json()["session_id"]
                ids = []
                for n in range(8):  # sent alternately, without waiting for the previous one
                    body = {
                        "input": {"message": f"m{n}"},
                        "session_id": session_id,
                        "service": "counter",
                    }
                    response = await client.post(
                        f"{pair[n % 2].url}/control_plane/tasks", json=body
                    )
                    assert response.status_code == 202, response.text
                    ids.append(response.json()["task_id"])
                turns = []
                for n, task_id in enumerate(ids):
                    final = await _final(client, pair[(n + 1) % 2].url, task_id)
                    assert final["status"] == "completed", final
                    turns.append(final["result"])
                assert [t["turns"] for t in turns] == list(range(1, 9))
                assert [t["said"] for t in turns] == [f"m{n}" for n in range(8)]
                session = await client.get(f"{pair[1].url}/control_plane/sessions/{session_id}")
                assert session.json()["task_ids"] == ids


async def test_redis_restart_not_ready_then_recovers_nothing_lost(tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        with clean_namespace(server.url) as namespace:
            config = redis_config(namespace, {"slow": SLOW}, url=server.url, claim_idle=1.0)
            replica = start_replica(config, tmp_path)
            try:
                wait_ready(replica)
                async with httpx.AsyncClient(base_url=replica.url, timeout=30) as client:
                    body = {"input": {"seconds": 0.3}, "service": "slow"}
                    accepted = [await _submit(client, replica.url, body) for _ in range(40)]
                    assert None not in accepted
                    server.stop()
                    with anyio.fail_after(10):
                        while (await client.get("/readyz")).status_code != 503:
                            await anyio.sleep(0.05)
                    refused = await client.post("/control_plane/tasks", json=body)
                    assert refused.status_code == 503 and refused.headers["Retry-After"]
                    assert refused.json()["error"] == "service_unavailable"
                    server.start()
                    with anyio.fail_after(20):
                        while (await client.get("/readyz")).status_code != 200:
                            await anyio.sleep(0.05)
                    late = await _submit(client, replica.url, body)
                    assert late is not None
                    finals = [await _settled(client, replica.url, t) for t in [*accepted, late]]
                    statuses = Counter(f.get("status", json.dumps(f)) for f in finals)
                    print(f"\nafter the restart: {dict(statuses)} of {len(finals)} accepted")
                    assert statuses == {"completed": len(finals)}
            finally:
                stop(replica)
    finally:
        server.stop()
