"""Retention: the sqlite file keeps finished tasks as the policy says, and stops growing.

Old finished tasks disappear (404, also from their session's task list) while running tasks
and tasks waiting for a person never do, whatever their age or number; under a steady load
the database stays the same size instead of growing with every task (a real server).
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

import anyio
import httpx
import pytest

from tests.conftest import gateway_client, running_server
from tests.fixtures_sessions import config, create_session, new_probe, submit, wait_status

pytestmark = pytest.mark.anyio

CP = "/control_plane"


def _config(db: Path, **retain: object) -> dict:
    return config(
        {"quick": {"source": "sleeper"}, "gated": {"source": "gated"}},
        store={"kind": "sqlite", "path": str(db), "retain": {"sweep_every": 0.05, **retain}},
    )


def _finished_rows(db: Path) -> int:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return conn.execute("SELECT count(*) FROM tasks WHERE finished_at IS NOT NULL").fetchone()[
            0
        ]


async def _until_gone(client: httpx.AsyncClient, task_id: str) -> None:
    deadline = time.monotonic() + 10
    while (await client.get(f"{CP}/tasks/{task_id}")).status_code != 404:
        assert time.monotonic() < deadline, f"{task_id} was never swept"
        await anyio.sleep(0.02)


async def test_old_finished_tasks_go_unfinished_and_waiting_ones_stay(tmp_path: Path) -> None:
    db = tmp_path / "retain.db"
    cfg = _config(db, max_tasks=5, max_age=None)
    cfg["services"]["desk"] = {"type": "human"}
    probe = new_probe("retain")
    async with gateway_client(cfg) as client:
        running = await submit(client, "gated", {"key": "retain", "label": "held"})
        waiting = await submit(client, "desk", "a question nobody answers")
        await wait_status(client, running, "running")
        await wait_status(client, waiting, "waiting_for_human")
        session_id = await create_session(client)
        quick = []
        for n in range(12):
            task_id = await submit(client, "quick", {"label": n}, session_id if n < 8 else None)
            answer = await client.get(f"{CP}/tasks/{task_id}/result", params={"wait": 10})
            assert answer.json()["status"] == "completed"
            quick.append(task_id)

        await _until_gone(client, quick[6])  # the 7 oldest finished ones go, the 5 newest stay
        for task_id in quick[:7]:
            assert (await client.get(f"{CP}/tasks/{task_id}")).status_code == 404
        for task_id in quick[7:]:
            assert (await client.get(f"{CP}/tasks/{task_id}")).json()["status"] == "completed"
        assert (await client.get(f"{CP}/tasks/{running}")).json()["status"] == "running"
        assert (await client.get(f"{CP}/tasks/{waiting}")).json()["status"] == "waiting_for_human"
        assert _finished_rows(db) == 5
        # the session stays, listing only what is still kept
        listed = (await client.get(f"{CP}/sessions/{session_id}/tasks")).json()
        assert [t["task_id"] for t in listed] == [quick[7]]
        probe.gate("held").set()
        done = await client.get(f"{CP}/tasks/{running}/result", params={"wait": 10})
        assert done.json()["status"] == "completed"


async def test_finished_tasks_older_than_max_age_go(tmp_path: Path) -> None:
    db = tmp_path / "aged.db"
    new_probe("aged")
    async with gateway_client(_config(db, max_age=0.3, max_tasks=None)) as client:
        running = await submit(client, "gated", {"key": "aged", "label": "held"})
        await wait_status(client, running, "running")
        old = await submit(client, "quick", {"label": "old"})
        await client.get(f"{CP}/tasks/{old}/result", params={"wait": 10})
        await _until_gone(client, old)
        # still running after many sweeps and well past max_age
        assert (await client.get(f"{CP}/tasks/{running}")).json()["status"] == "running"
        await client.post(f"{CP}/tasks/{running}/cancel")


def _pages(db: Path) -> int:
    """The database's size in pages as readers see it (WAL content included)."""
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return conn.execute("PRAGMA page_count").fetchone()[0]


def test_under_a_steady_load_the_file_stops_growing(tmp_path: Path) -> None:
    db = tmp_path / "steady.db"
    keep, per_round, rounds = 30, 40, 8
    pad = "y" * 4096
    sizes = []
    with (
        running_server(_config(db, max_tasks=keep, max_age=None), tmp_path) as server,
        httpx.Client(base_url=server.base_url, timeout=30) as http,
    ):
        first = None
        for _ in range(rounds):
            for _ in range(per_round):
                answer = http.post("/services/quick/run", json={"kwargs": {"pad": pad}})
                assert answer.json()["status"] == "completed", answer.text
                first = first or answer.json()["task_id"]
            deadline = time.monotonic() + 10
            while _finished_rows(db) > keep:
                assert time.monotonic() < deadline, "the sweeper did not keep up"
                time.sleep(0.02)
            sizes.append(_pages(db))
        assert http.get(f"{CP}/tasks/{first}").status_code == 404
    page = 4096
    written = rounds * per_round * len(pad)
    # everything written would need ~1.3 MB; what is kept stays a small, flat footprint
    assert max(sizes) * page < written / 3, sizes
    assert max(sizes[3:]) <= sizes[2] * 1.2 + 8, sizes
    # and on disk, once the server has stopped (the last connection checkpoints the WAL; the
    # test's own connections above are closed, so the server's is the last)
    on_disk = db.stat().st_size + sum(p.stat().st_size for p in tmp_path.glob("steady.db-wal"))
    assert on_disk < written / 3, on_disk


async def test_a_task_that_takes_a_forgotten_tasks_id_gets_its_own_event_stream() -> None:
    # Task "a" leaves the task table (retain_finished_tasks) and its id is free again, but its
    # closed event stream (and result, held unwritten) stayed in the hub: a new task "a" had
    # its events dropped, and its stream answered the old task's events and result.
    from tests.fixtures_sessions import parse_sse

    setup = {
        "retain_finished_tasks": 1,
        "services": {"echo": {"type": "workflow", "source": "examples.echo:workflow"}},
    }

    async def run(client: httpx.AsyncClient, message: str, **task: str) -> dict:
        body = {"service": "echo", "input": {"message": message}, **task}
        accepted = await client.post(f"{CP}/tasks", json=body)
        assert accepted.status_code == 202, accepted.text
        task_id = accepted.json()["task_id"]
        ended = await client.get(f"{CP}/tasks/{task_id}/result", params={"wait": 10})
        assert ended.json()["status"] == "completed", ended.text
        return ended.json()

    apps: list = []
    async with gateway_client(setup, app_out=apps) as client:
        hub = apps[0].state.runtime.control_plane.events
        hub.retain_closed = 3  # streams of ended tasks the hub keeps
        await run(client, "first", task_id="a")
        await run(client, "b")  # "a" leaves the table
        assert (await client.get(f"{CP}/tasks/a")).status_code == 404
        assert (await run(client, "second", task_id="a"))["result"] == "second"
        events = await client.get(f"{CP}/tasks/a/events")
        frames = parse_sse(events.text.splitlines())
        assert [kind for kind, _ in frames] == ["status", "status", "result"], events.text
        assert frames[-1][1]["data"]["result"] == "second"
        assert frames[0][1]["seq"] == 1 and frames[0][1]["status"] == "pending"
        # the new stream is kept as the latest ended one, not in the old one's place
        await run(client, "c")
        await run(client, "d")
        assert "a" in hub
