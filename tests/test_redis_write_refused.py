"""Redis that is reachable but takes no writes (out of memory, MISCONF, read-only replica):
new work is refused with 503 + Retry-After and a message that says why; accepted tasks are
never lost and end exactly once when Redis takes writes again.

A redis-server of the test's own (a free port): `CONFIG SET maxmemory` never touches the
shared one. A missing Redis fails these tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import httpx
import pytest
import redis
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError

from gateway.bus.redis import write_refusal
from tests.redis_helpers import (
    PrivateRedis,
    clean_namespace,
    redis_config,
    start_replica,
    stop,
    wait_ready,
)

pytestmark = pytest.mark.anyio

SLOW = {"type": "workflow", "source": "tests.fixtures_workflows:slow", "max_concurrent_tasks": 8}
ECHO = {"type": "workflow", "source": "examples.echo:workflow"}


def test_each_kind_of_refused_write_is_named() -> None:
    oom = OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")
    assert "out of memory" in (write_refusal(oom) or "")
    misconf = ResponseError("MISCONF Redis is configured to save RDB snapshots, but ...")
    assert "MISCONF" in (write_refusal(misconf) or "")
    assert "read-only replica" in (write_refusal(ReadOnlyError("You can't write")) or "")
    assert write_refusal(ResponseError("WRONGTYPE Operation against a key")) is None
    assert write_refusal(ConnectionError("gone")) is None


async def test_out_of_memory_refuses_new_work_and_loses_no_accepted_task(tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path)
    server.start()
    admin = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        with clean_namespace(server.url) as namespace:
            services = {"slow": SLOW, "echo": ECHO}
            config = redis_config(namespace, services, url=server.url, claim_idle=1.0)
            replica = start_replica(config, tmp_path)
            try:
                wait_ready(replica)
                async with httpx.AsyncClient(base_url=replica.url, timeout=30) as client:
                    body = {"service": "slow", "input": {"seconds": 1.0}}
                    accepted = []
                    for _ in range(3):
                        response = await client.post("/control_plane/tasks", json=body)
                        assert response.status_code == 202, response.text
                        accepted.append(response.json()["task_id"])
                    admin.config_set("maxmemory", 1)  # every write that needs memory fails
                    refused = await client.post("/control_plane/tasks", json=body)
                    assert refused.status_code == 503, refused.text
                    assert refused.headers["Retry-After"] == "5"
                    assert "out of memory" in refused.json()["detail"], refused.text
                    run = await client.post("/services/echo/run", json={"kwargs": {}})
                    assert run.status_code == 503 and "maxmemory" in run.json()["detail"]
                    session = await client.post("/control_plane/sessions")
                    assert session.status_code == 503, session.text
                    # Reads still answer, and the refused task left no trace.
                    seen = await client.get(f"/control_plane/tasks/{accepted[0]}")
                    assert seen.status_code == 200, seen.text
                    listed = (await client.get("/control_plane/tasks")).json()
                    assert sorted(t["task_id"] for t in listed["items"]) == sorted(accepted)
                    with anyio.fail_after(20):  # the tasks end meanwhile: their ends are refused
                        while replica.log().count("out of memory") < len(accepted):
                            await anyio.sleep(0.1)
                    admin.config_set("maxmemory", 0)
                    for task_id in accepted:  # taken over and run again, then stored
                        final = await client.get(f"/control_plane/tasks/{task_id}/result?wait=30")
                        assert final.json()["status"] == "completed", final.text
                        events = admin.xrange(f"gw:{namespace}:ev:{task_id}")
                        results = [e for _, e in events if json.loads(e["e"])["kind"] == "result"]
                        assert len(results) == 1  # exactly one terminal state
                    again = await client.post("/control_plane/tasks", json=body)
                    assert again.status_code == 202, again.text
                log = replica.log()
                assert "lost Redis" not in log, log  # it answered all along: never "lost"
                assert "adverts and take-overs wait" in log, log
            finally:
                stop(replica)
    finally:
        admin.close()
        server.stop()
