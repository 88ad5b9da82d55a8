"""The SQLite store on its own: durable commits, bounded context cache, reads see the latest."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import anyio
import pytest

from gateway.control_plane.sessions import SessionRecord
from gateway.control_plane.tasks import TaskRecord
from gateway.store import sqlite as sqlite_store
from gateway.store.retention import Retention
from gateway.store.sqlite import SqliteStore

pytestmark = pytest.mark.anyio


async def test_commits_survive_reopening_and_the_context_cache_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "CONTEXT_CACHE_SIZE", 3)
    db = tmp_path / "store.db"
    async with anyio.create_task_group() as tg:
        store = SqliteStore(db)
        await store.open(tg)
        for n in range(10):
            store.save_context("s", f"svc{n}", f"payload-{n}")
        # not yet committed: reads still see what was just written
        assert store.load_context("s", "svc9") == "payload-9"
        store.save_task(TaskRecord(task_id="t1", service="svc0", input="x"))
        store.save_session(SessionRecord(session_id="s"))
        await store.flush()
        assert len(store._context_cache) <= 3
        # an evicted entry comes back from the database
        assert store.load_context("s", "svc0") == "payload-0"
        await store.close()

    async with anyio.create_task_group() as tg:
        reopened = SqliteStore(db)
        await reopened.open(tg)
        assert reopened.load_context("s", "svc5") == "payload-5"
        assert reopened.load_task("t1").service == "svc0"
        assert [t.task_id for t in reopened.unfinished_tasks()] == ["t1"]
        assert [s.session_id for s in reopened.load_sessions()] == ["s"]
        reopened.delete_session("s")
        await reopened.flush()
        assert reopened.load_context("s", "svc5") is None
        assert reopened.load_sessions() == []
        await reopened.close()


async def test_a_file_from_before_retention_is_migrated_and_swept(tmp_path: Path) -> None:
    """An older file (no finished_at column, no incremental auto-vacuum) is brought up to date
    at open; a sweep then removes its finished tasks and leaves the unfinished one."""
    db = tmp_path / "old.db"
    done = TaskRecord(task_id="done", service="s", status="completed", finished_at=1.0)
    live = TaskRecord(task_id="live", service="s", status="running")
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE tasks (task_id TEXT PRIMARY KEY, status TEXT, body TEXT)")
        for record in (done, live):
            conn.execute(
                "INSERT INTO tasks VALUES (?, ?, ?)",
                (record.task_id, record.status.value, record.model_dump_json()),
            )
        conn.commit()
    async with anyio.create_task_group() as tg:
        store = SqliteStore(db, Retention(max_age=None, max_tasks=0, sweep_every=3600))
        await store.open(tg)
        swept: list[list[tuple]] = []
        store.add_sweep_listener(swept.append)
        assert await store.sweep() == 1
        assert swept == [[("done", None)]]
        assert store.load_task("done") is None
        assert store.load_task("live") is not None
        await store.close()
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
