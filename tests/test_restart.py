"""Tasks survive a restart: a real server on a sqlite store is killed (SIGKILL) and started again.

Before the kill: one task finished, one running (it would sleep for an hour), one queued behind
it (the service runs one task at a time), and in a session a running task with the next one
waiting in the session's lane; a counting workflow has counted to 2 in a session. After the
restart on the same database: the finished task and its result are intact, the running ones
ended `failed` with `interrupted by restart`, the queued ones ran to completion, and the count
goes on at 3 (same GATEWAY_SECRET).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import anyio
import httpx
import pytest

from gateway.store.sqlite import SqliteStore
from tests.conftest import gateway_client, running_server
from tests.fixtures_sessions import (
    config,
    create_session,
    new_probe,
    parse_sse,
    submit,
    summary,
    wait_result,
    wait_status,
)

pytestmark = pytest.mark.anyio

CP = "/control_plane"
ENV = {"GATEWAY_SECRET": "restart-test-secret"}


def _config(db: Path) -> dict:
    return config(
        {
            "sleeper": {"source": "sleeper", "max_concurrent_tasks": 1},
            "lanes": {"source": "sleeper", "max_concurrent_tasks": 4},
            "counter": {"source": "examples.counter:workflow"},
        },
        store={"kind": "sqlite", "path": str(db)},
    )


async def _committed(db: Path, expected: dict[str, str], session_id: str) -> None:
    """Bounded polling of the database file until the statuses (and the session's saved
    context) are committed, so the kill cannot race the store's writer."""
    deadline = time.monotonic() + 10
    while True:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            rows = dict(conn.execute("SELECT task_id, status FROM tasks").fetchall())
            contexts = conn.execute(
                "SELECT count(*) FROM contexts WHERE session_id = ?", (session_id,)
            ).fetchone()[0]
        if all(rows.get(k) == v for k, v in expected.items()) and contexts:
            return
        assert time.monotonic() < deadline, f"not committed: {rows} / contexts={contexts}"
        await anyio.sleep(0.02)


async def _count(http: httpx.AsyncClient, session_id: str) -> int:
    return (await _count_task(http, session_id))["result"]["turns"]


async def _count_task(http: httpx.AsyncClient, session_id: str) -> dict:
    body = {"kwargs": {"message": "again"}, "session_id": session_id, "wait": 10}
    answer = (await http.post("/services/counter/run", json=body)).json()
    assert answer["status"] == "completed", answer
    return answer


async def test_tasks_and_session_state_survive_sigkill(tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    cfg = _config(db)

    with running_server(cfg, tmp_path, env=ENV) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
            done = await submit(http, "sleeper", {"label": "done"})
            finished = await wait_result(http, done)
            assert finished["status"] == "completed"
            blocker = await submit(http, "sleeper", {"block": True})
            await wait_status(http, blocker, "running")
            queued = await submit(http, "sleeper", {"label": "queued"})

            lane_session = await create_session(http)
            lane_first = await submit(http, "lanes", {"block": True}, lane_session)
            await wait_status(http, lane_first, "running")
            lane_next = await submit(http, "lanes", {"label": "lane"}, lane_session)

            counting = await create_session(http)
            counts = [await _count_task(http, counting) for _ in range(2)]
            assert [c["result"]["turns"] for c in counts] == [1, 2]

            # the queued tasks really are waiting, not running
            for task_id in (queued, lane_next):
                assert (await http.get(f"{CP}/tasks/{task_id}")).json()["status"] == "pending"
            await _committed(
                db,
                {
                    done: "completed",
                    blocker: "running",
                    queued: "pending",
                    lane_first: "running",
                    lane_next: "pending",
                    # its context is saved before its end: committed with it or earlier
                    counts[-1]["task_id"]: "completed",
                },
                counting,
            )
        server.process.kill()
        server.process.wait(timeout=10)

    with running_server(cfg, tmp_path, env=ENV) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
            # the finished task and its result, intact
            assert (await http.get(f"{CP}/tasks/{done}")).json() == finished
            assert (await wait_result(http, done)) == finished

            # its id is still taken: a new task cannot overwrite it
            reused = await http.post(
                f"{CP}/tasks", json={"service": "sleeper", "task_id": done, "input": {}}
            )
            assert reused.status_code == 409, reused.text
            assert (await http.get(f"{CP}/tasks/{done}")).json() == finished

            # the running ones: failed, with the reason
            for task_id in (blocker, lane_first):
                record = (await http.get(f"{CP}/tasks/{task_id}")).json()
                assert record["status"] == "failed", record
                assert record["error"] == "interrupted by restart"

            # the queued ones ran (each ended, none is left without a terminal state)
            ran = await wait_result(http, queued)
            assert ran["status"] == "completed"
            assert ran["result"] == "done:queued"
            lane_ran = await wait_result(http, lane_next)
            assert lane_ran["status"] == "completed"
            assert lane_ran["result"] == "done:lane"

            # the sessions came back with their tasks and statuses
            listing = (await http.get(f"{CP}/sessions/{lane_session}/tasks")).json()
            assert [(t["task_id"], t["status"]) for t in listing] == [
                (lane_first, "failed"),
                (lane_next, "completed"),
            ]
            # and the counter resumes from its saved, signed context
            assert await _count(http, counting) == 3

            # event streams of tasks from before the restart still end
            with anyio.fail_after(10):
                old = parse_sse((await http.get(f"{CP}/tasks/{done}/events")).text.splitlines())
                cut = parse_sse((await http.get(f"{CP}/tasks/{blocker}/events")).text.splitlines())
            # (their early events are gone: a gap event says so; numbering went on)
            assert summary(old) == ["gap:gap", "result:completed"]
            assert summary(cut) == ["gap:gap", "result:failed"]
            assert old[1][1]["seq"] > 1 and cut[1][1]["seq"] > 1
            assert old[0][1]["data"]["dropped"] == old[1][1]["seq"] - 1
            assert cut[-1][1]["data"]["error"] == "interrupted by restart"


async def test_a_graceful_restart_keeps_tasks_that_never_started(tmp_path: Path) -> None:
    """SIGTERM: the running task is cancelled after the grace period (1 s here), but tasks that
    were accepted and never started are not thrown away: they run after the restart."""
    db = tmp_path / "gw.db"
    cfg = _config(db)
    with running_server(cfg, tmp_path, env=ENV) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
            blocker = await submit(http, "sleeper", {"block": True})
            await wait_status(http, blocker, "running")
            queued = await submit(http, "sleeper", {"label": "queued"})
            session_id = await create_session(http)
            lane_first = await submit(http, "lanes", {"block": True}, session_id)
            await wait_status(http, lane_first, "running")
            lane_next = await submit(http, "lanes", {"label": "lane"}, session_id)
    # (leaving the block sent SIGTERM and waited for the process to exit)
    assert server.process.returncode is not None

    with running_server(cfg, tmp_path, env=ENV) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
            for task_id in (blocker, lane_first):
                record = (await http.get(f"{CP}/tasks/{task_id}")).json()
                assert record["status"] == "cancelled", record
                assert record["error"] == "cancelled at shutdown"
            for task_id, label in ((queued, "queued"), (lane_next, "lane")):
                result = await wait_result(http, task_id)
                assert result["status"] == "completed", result
                assert result["result"] == f"done:{label}"


async def test_an_accepted_task_is_committed_before_the_answer_and_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What makes a SIGKILL right after a 202 safe, without the loop ever waiting on disk."""
    loop_thread = threading.get_ident()
    writer_threads: set[int] = set()
    original = SqliteStore._write_batch

    def recording(self, batch):
        writer_threads.add(threading.get_ident())
        return original(self, batch)

    monkeypatch.setattr(SqliteStore, "_write_batch", recording)
    probe = new_probe("durable")
    db = tmp_path / "gw.db"
    cfg = config({"gated": {"source": "gated"}}, store={"kind": "sqlite", "path": str(db)})
    async with gateway_client(cfg) as client:
        session_id = await create_session(client)
        task_id = await submit(client, "gated", {"key": "durable", "label": "x"}, session_id)
        # no waiting: the 202 came after the commit
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            row = conn.execute("SELECT status FROM tasks WHERE task_id = ?", (task_id,))
            assert row.fetchone() is not None
            body = conn.execute(
                "SELECT body FROM sessions WHERE session_id = ?", (session_id,)
            ).fetchone()
        assert body is not None and task_id in body[0]
        probe.gate("x").set()
        await wait_result(client, task_id)
    assert writer_threads and loop_thread not in writer_threads
