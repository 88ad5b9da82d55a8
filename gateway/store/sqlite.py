"""SQLite persistence: tasks, sessions and signed contexts survive a restart.

Changes are coalesced in memory (latest value per key, so the backlog is bounded by the number
of live keys) and committed by one writer task that runs each batch in a worker thread; the
event loop never waits on the disk except where a caller asks to, via `flush()`. WAL mode with
synchronous=NORMAL keeps commits durable across a process crash (SIGKILL).
"""

from __future__ import annotations

import logging
import sqlite3
from collections import OrderedDict
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup

from gateway.control_plane.sessions import SessionRecord
from gateway.control_plane.tasks import TaskRecord
from gateway.store import Store

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_status ON tasks(status);
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS contexts (
    session_id TEXT NOT NULL,
    service TEXT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (session_id, service)
);
"""

UNFINISHED = ("pending", "running", "waiting_for_human")
CONTEXT_CACHE_SIZE = 4096

logger = logging.getLogger("gateway.store.sqlite")


class SqliteStore(Store):
    durable = True

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._tasks: dict[str, str] = {}
        self._task_status: dict[str, str] = {}
        self._sessions: dict[str, str | None] = {}
        self._contexts: dict[tuple[str, str], str | None] = {}
        self._context_cache: OrderedDict[tuple[str, str], str | None] = OrderedDict()
        self._dirty = anyio.Event()
        self._committed = anyio.Event()
        self._recorded = 0
        self._written = 0
        self._closing = False
        self._limiter = anyio.CapacityLimiter(1)
        self._writer_done = anyio.Event()

    # -- lifecycle ---------------------------------------------------------------------------
    async def open(self, task_group: TaskGroup) -> None:
        await anyio.to_thread.run_sync(self._connect, limiter=self._limiter)
        task_group.start_soon(self._writer, name="sqlite-store-writer")

    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(SCHEMA)
        self._conn = conn
        self._reader = sqlite3.connect(self.path, check_same_thread=False)

    async def close(self) -> None:
        self._closing = True
        self._dirty.set()
        with anyio.move_on_after(10):
            await self._writer_done.wait()
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await anyio.to_thread.run_sync(conn.close, limiter=self._limiter)
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    async def flush(self) -> None:
        target = self._recorded
        while self._written < target and not self._writer_done.is_set():
            await self._committed.wait()

    # -- recording (never blocks) ------------------------------------------------------------
    def _touch(self) -> None:
        self._recorded += 1
        self._dirty.set()

    def save_task(self, record: TaskRecord) -> None:
        self._tasks[record.task_id] = record.model_dump_json()
        self._task_status[record.task_id] = record.status.value
        self._touch()

    def save_session(self, record: SessionRecord) -> None:
        self._sessions[record.session_id] = record.model_dump_json()
        self._touch()

    def delete_session(self, session_id: str) -> None:
        self._sessions[session_id] = None
        for key in [k for k in self._context_cache if k[0] == session_id]:
            self._context_cache[key] = None
            self._contexts[key] = None
        self._contexts[(session_id, "*")] = None
        self._touch()

    def save_context(self, session_id: str, service: str, payload: str) -> None:
        self._contexts[(session_id, service)] = payload
        self._cache_context((session_id, service), payload)
        self._touch()

    def _cache_context(self, key: tuple[str, str], payload: str | None) -> None:
        """A bounded read cache; evicted entries are read back from the database."""
        self._context_cache[key] = payload
        self._context_cache.move_to_end(key)
        while len(self._context_cache) > CONTEXT_CACHE_SIZE:
            self._context_cache.popitem(last=False)

    # -- reading -----------------------------------------------------------------------------
    def load_task(self, task_id: str) -> TaskRecord | None:
        pending = self._tasks.get(task_id)
        if pending is not None:
            return TaskRecord.model_validate_json(pending)
        row = self._query_one("SELECT body FROM tasks WHERE task_id = ?", (task_id,))
        return TaskRecord.model_validate_json(row[0]) if row else None

    def unfinished_tasks(self) -> list[TaskRecord]:
        marks = ",".join("?" for _ in UNFINISHED)
        rows = self._query_all(
            f"SELECT body FROM tasks WHERE status IN ({marks}) ORDER BY rowid", UNFINISHED
        )
        return [TaskRecord.model_validate_json(r[0]) for r in rows]

    def load_sessions(self) -> list[SessionRecord]:
        rows = self._query_all("SELECT body FROM sessions ORDER BY rowid", ())
        return [SessionRecord.model_validate_json(r[0]) for r in rows]

    def load_context(self, session_id: str, service: str) -> str | None:
        key = (session_id, service)
        if key in self._contexts:  # written since the last commit
            return self._contexts[key]
        if key in self._context_cache:
            self._context_cache.move_to_end(key)
            return self._context_cache[key]
        row = self._query_one(
            "SELECT payload FROM contexts WHERE session_id = ? AND service = ?", key
        )
        payload = row[0] if row else None
        self._cache_context(key, payload)
        return payload

    def _query_one(self, sql: str, args: tuple) -> Any:
        """Point reads by primary key (sub-millisecond); they see only committed rows."""
        assert self._reader is not None, "store not open"
        return self._reader.execute(sql, args).fetchone()

    def _query_all(self, sql: str, args: tuple) -> list[Any]:
        assert self._reader is not None, "store not open"
        return self._reader.execute(sql, args).fetchall()

    # -- writing -----------------------------------------------------------------------------
    async def _writer(self) -> None:
        try:
            while True:
                await self._dirty.wait()
                self._dirty = anyio.Event()
                if self._recorded > self._written:
                    batch, upto = self._take_batch(), self._recorded
                    with anyio.CancelScope(shield=True):
                        try:
                            await anyio.to_thread.run_sync(
                                self._write_batch, batch, limiter=self._limiter
                            )
                        except Exception:
                            logger.exception("could not write %s to %s", upto, self.path)
                    self._written = upto
                    committed, self._committed = self._committed, anyio.Event()
                    committed.set()
                if self._closing and self._recorded == self._written:
                    return
        finally:
            self._writer_done.set()
            self._committed.set()

    def _take_batch(self) -> dict[str, Any]:
        batch = {
            "tasks": [(k, self._task_status[k], v) for k, v in self._tasks.items()],
            "sessions": list(self._sessions.items()),
            "contexts": list(self._contexts.items()),
        }
        self._tasks, self._task_status, self._sessions, self._contexts = {}, {}, {}, {}
        return batch

    def _write_batch(self, batch: dict[str, Any]) -> None:
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN")
        try:
            conn.executemany(
                "INSERT INTO tasks(task_id, status, body) VALUES (?, ?, ?) "
                "ON CONFLICT(task_id) DO UPDATE SET status = excluded.status, body = excluded.body",
                batch["tasks"],
            )
            for session_id, body in batch["sessions"]:
                if body is None:
                    conn.execute("DELETE FROM sessions WHERE session_id = ?", (session_id,))
                else:
                    conn.execute(
                        "INSERT INTO sessions(session_id, body) VALUES (?, ?) "
                        "ON CONFLICT(session_id) DO UPDATE SET body = excluded.body",
                        (session_id, body),
                    )
            for (session_id, service), payload in batch["contexts"]:
                if service == "*":
                    conn.execute("DELETE FROM contexts WHERE session_id = ?", (session_id,))
                elif payload is None:
                    conn.execute(
                        "DELETE FROM contexts WHERE session_id = ? AND service = ?",
                        (session_id, service),
                    )
                else:
                    conn.execute(
                        "INSERT INTO contexts(session_id, service, payload) VALUES (?, ?, ?) "
                        "ON CONFLICT(session_id, service) DO UPDATE SET payload = excluded.payload",
                        (session_id, service, payload),
                    )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
