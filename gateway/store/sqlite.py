"""SQLite persistence: tasks, sessions and signed contexts survive a restart.

Changes are coalesced in memory (latest value per key, so the backlog is bounded by the number
of live keys) and committed by one writer task that runs each batch in a worker thread; the
event loop never waits on the disk except where a caller asks to, via `flush()`. WAL mode with
synchronous=NORMAL keeps commits durable across a process crash (SIGKILL).

A commit that fails (disk full, I/O error) is never reported as written: `flush()` raises
`StoreUnavailable` to the callers waiting on it, the first saves of new tasks in it are dropped
(their submitters refuse them), and every other change goes back into the next batch, which the
writer retries with a capped back-off (cut short by a new submission, which is waiting for its
answer, and by closing). While nothing is left to retry, a tiny probe write tells
when the disk takes writes again, so `writable` (and `/readyz`) recover by themselves.

Finished tasks are kept as the `Retention` policy says (`gateway/store/retention.py`): a sweeper
in the gateway's task group deletes the oldest past it in small transactions and returns the
space (the file uses `auto_vacuum=INCREMENTAL`; an older file is converted once at open).

Size: one class on purpose — the writer, its failure handling and the sweeper share one
connection, one worker-thread limiter and the pending-batch state; the retention SQL itself
lives in `retention.py`.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup

from gateway.control_plane.sessions import SessionRecord
from gateway.control_plane.tasks import TaskRecord
from gateway.messages import TaskStatus
from gateway.store import Store, StoreUnavailable, TaskFilter
from gateway.store.lock import StoreLock
from gateway.store.retention import Retention, delete_expired, reclaim_step

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    body TEXT NOT NULL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS tasks_status ON tasks(status);
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS contexts (
    session_id TEXT NOT NULL,
    service TEXT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (session_id, service)
);
"""

# after the column exists (files from before retention get it added at open)
FINISHED_INDEX = (
    "CREATE INDEX IF NOT EXISTS tasks_finished ON tasks(finished_at) WHERE finished_at IS NOT NULL"
)

UNFINISHED = tuple(s.value for s in TaskStatus if not s.is_terminal)
CONTEXT_CACHE_SIZE = 4096
BACKOFF_MIN = 0.05  # seconds before the first retry of a failed commit
BACKOFF_MAX = 1.0  # cap: a refused submission waits about this long at most for its answer

logger = logging.getLogger("gateway.store.sqlite")


class _Commit:
    """The outcome of one batch, shared by everyone whose changes are in it."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.error: str | None = None


class SqliteStore(Store):
    durable = True

    def __init__(self, path: str | Path, retention: Retention | None = None) -> None:
        self.path = Path(path)
        self.lock = StoreLock(self.path)
        self.retention = retention or Retention()
        #: Called with the (task_id, session_id) rows each sweep deleted, on the event loop.
        self.on_swept: list[Callable[[list[tuple]], None]] = []
        self.writable = True
        self.failed_commits = 0
        self._conn: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        # the open batch: changes recorded since the writer last took one
        self._tasks: dict[str, str] = {}
        self._task_meta: dict[str, tuple[str, float | None]] = {}  # status, finished_at
        self._new_tasks: set[str] = set()
        self._sessions: dict[str, str | None] = {}
        self._contexts: dict[tuple[str, str], str | None] = {}
        self._changed = False
        self._open_commit = _Commit()
        # the batch being written (its task rows stay readable until they are committed)
        self._in_flight: _Commit | None = None
        self._in_flight_tasks: dict[str, str] = {}
        self._context_cache: OrderedDict[tuple[str, str], str | None] = OrderedDict()
        self._wake = anyio.Event()
        self._urgent = anyio.Event()  # ends a back-off: someone waits for an answer, or closing
        self._delay = 0.0
        self._closing = False
        self._closed = anyio.Event()
        self._limiter = anyio.CapacityLimiter(1)
        self._writer_done = anyio.Event()

    # -- lifecycle ---------------------------------------------------------------------------
    async def open(self, task_group: TaskGroup) -> None:
        self.lock.acquire()  # usually taken already when the app was built; never recover without
        await anyio.to_thread.run_sync(self._connect, limiter=self._limiter)
        task_group.start_soon(self._writer, name="sqlite-store-writer")
        if self.retention.active:
            task_group.start_soon(self._sweeper, name="sqlite-store-sweeper")

    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        fresh = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
        if fresh:  # only takes effect before the first table exists
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(SCHEMA)
        self._migrate(conn, fresh)
        self._conn = conn
        self._reader = sqlite3.connect(self.path, check_same_thread=False)

    def _migrate(self, conn: sqlite3.Connection, fresh: bool) -> None:
        """Bring a file written by an older version up to date (once, at open)."""
        columns = {row[1] for row in conn.execute("PRAGMA table_info(tasks)")}
        if "finished_at" not in columns:
            marks = ",".join("?" for _ in UNFINISHED)
            conn.execute("BEGIN")
            conn.execute("ALTER TABLE tasks ADD COLUMN finished_at REAL")
            conn.execute(
                "UPDATE tasks SET finished_at = json_extract(body, '$.finished_at') "
                f"WHERE status NOT IN ({marks})",
                UNFINISHED,
            )
            conn.execute("COMMIT")
        conn.execute(FINISHED_INDEX)
        if not fresh and conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
            # Space freed by retention is reused either way; returning it to the file system
            # needs incremental auto-vacuum, which an existing file only gets by a full VACUUM.
            logger.warning("converting %s to incremental auto-vacuum (one-time VACUUM)", self.path)
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            conn.execute("VACUUM")

    async def close(self) -> None:
        self._closing = True
        self._closed.set()
        self._urgent.set()
        self._wake.set()
        try:
            with anyio.move_on_after(10):
                await self._writer_done.wait()
            if self._conn is not None:
                conn, self._conn = self._conn, None
                await anyio.to_thread.run_sync(conn.close, limiter=self._limiter)
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        finally:
            self.lock.release()  # only now may another gateway open the file

    async def flush(self) -> None:
        if self._changed:
            commit = self._open_commit
        elif self._in_flight is not None:
            commit = self._in_flight
        else:
            return
        if self._writer_done.is_set():
            raise StoreUnavailable("the store is closed")
        await commit.done.wait()
        if commit.error is not None:
            raise StoreUnavailable(commit.error)

    # -- recording (never blocks) ------------------------------------------------------------
    def _touch(self) -> None:
        self._changed = True
        self._wake.set()

    def save_task(self, record: TaskRecord, *, new: bool = False) -> None:
        self._tasks[record.task_id] = record.model_dump_json()
        self._task_meta[record.task_id] = (record.status.value, record.finished_at)
        if new:
            self._new_tasks.add(record.task_id)
            self._urgent.set()
        self._touch()

    def save_session(self, record: SessionRecord, payload: str | None = None) -> None:
        self._sessions[record.session_id] = payload or record.model_dump_json()
        self._touch()

    def delete_session(self, session_id: str) -> None:
        self._sessions[session_id] = None
        for key in [k for k in self._context_cache if k[0] == session_id]:
            self._context_cache[key] = None
            self._contexts[key] = None
        self._contexts[(session_id, "*")] = None
        self._touch()

    def delete_context(self, session_id: str, service: str) -> None:
        self._contexts[(session_id, service)] = None  # the writer deletes the row
        self._cache_context((session_id, service), None)
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
        pending = self._tasks.get(task_id) or self._in_flight_tasks.get(task_id)
        if pending is not None:
            return TaskRecord.model_validate_json(pending)
        row = self._query_one("SELECT body FROM tasks WHERE task_id = ?", (task_id,))
        return TaskRecord.model_validate_json(row[0]) if row else None

    async def list_tasks(self, query: TaskFilter) -> tuple[list[TaskRecord], int]:
        """A page of every task in the file (tasks from before a restart included), newest
        first by default; what was recorded so far is committed first, so nothing is missing."""
        await self.flush()
        return await anyio.to_thread.run_sync(self._list_tasks, query)

    def _list_tasks(self, query: TaskFilter) -> tuple[list[TaskRecord], int]:
        where, args = [], []
        if query.status is not None:
            where.append("status = ?")
            args.append(query.status)
        for field in ("service", "session_id"):
            value = getattr(query, field)
            if value is not None:
                where.append(f"json_extract(body, '$.{field}') = ?")
                args.append(value)
        if query.sort not in ("created_at", "started_at", "finished_at"):
            raise ValueError(f"cannot sort by {query.sort!r}")
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        direction = "DESC" if query.descending else "ASC"
        value = f"coalesce(json_extract(body, '$.{query.sort}'), 0)"
        # ties broken by task_id: a total order, the same one a cursor (`after`) names
        order = f"{value} {direction}, task_id {direction}"
        page_clause, page_args = clause, list(args)
        if query.after is not None:
            page_clause += " AND " if where else " WHERE "
            page_clause += f"({value}, task_id) {'<' if query.descending else '>'} (?, ?)"
            page_args += list(query.after)
        # a connection of its own: this runs in a worker thread, beside the loop's point reads
        conn = sqlite3.connect(self.path)
        try:
            total = conn.execute(f"SELECT count(*) FROM tasks{clause}", args).fetchone()[0]
            rows = conn.execute(
                f"SELECT body FROM tasks{page_clause} ORDER BY {order} LIMIT ? OFFSET ?",
                [*page_args, query.limit, query.offset],
            ).fetchall()
        finally:
            conn.close()
        return [TaskRecord.model_validate_json(r[0]) for r in rows], total

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
                await self._wake.wait()
                self._wake = anyio.Event()
                if self._changed:
                    ok = await self._commit_open_batch()
                elif not self.writable:
                    ok = await self._attempt(self._probe) is None
                else:
                    ok = True
                if self._closing and (not ok or not self._changed):
                    if not ok:
                        logger.error("closing %s with changes it could not write", self.path)
                    return
                if not ok:
                    # Retry (or probe) after a capped back-off.
                    self._delay = min(BACKOFF_MAX, max(BACKOFF_MIN, self._delay * 2))
                    if not self._new_tasks:
                        self._urgent = anyio.Event()
                    with anyio.move_on_after(self._delay):
                        await self._urgent.wait()
                    self._wake.set()
        finally:
            for commit in (self._in_flight, self._open_commit):
                if commit is not None and not commit.done.is_set():
                    commit.error = "the store closed before this change was committed"
                    commit.done.set()
            self._writer_done.set()

    async def _commit_open_batch(self) -> bool:
        batch = self._take_batch()
        commit = self._in_flight = self._open_commit
        self._open_commit = _Commit()
        error = await self._attempt(self._write_batch, batch)
        self._in_flight, self._in_flight_tasks = None, {}
        if error is not None:
            self._restore(batch)
        commit.error = error
        commit.done.set()
        return error is None

    async def _attempt(self, write: Any, *args: Any) -> str | None:
        """Run one write in the worker thread; the error text if it failed."""
        with anyio.CancelScope(shield=True):
            try:
                await anyio.to_thread.run_sync(write, *args, limiter=self._limiter)
            except Exception as exc:
                self.failed_commits += 1
                if self.writable:
                    logger.error("cannot write to %s (%s): refusing new tasks", self.path, exc)
                self.writable = False
                return f"the store cannot write: {exc}"
        if not self.writable:
            logger.warning("%s takes writes again", self.path)
        self.writable = True
        self._delay = 0.0
        return None

    def _take_batch(self) -> dict[str, Any]:
        batch = {
            "tasks": [(k, *self._task_meta[k], v) for k, v in self._tasks.items()],
            "new": self._new_tasks,
            "sessions": list(self._sessions.items()),
            "contexts": list(self._contexts.items()),
        }
        self._in_flight_tasks = self._tasks
        self._tasks, self._task_meta, self._sessions, self._contexts = {}, {}, {}, {}
        self._new_tasks = set()
        self._changed = False
        return batch

    def _restore(self, batch: dict[str, Any]) -> None:
        """Put a failed batch back for the retry, under anything recorded since (newer wins).
        First saves of new tasks are dropped: their submissions are refused, not retried."""
        for task_id, status, finished_at, body in batch["tasks"]:
            if task_id not in batch["new"] and task_id not in self._tasks:
                self._tasks[task_id] = body
                self._task_meta[task_id] = (status, finished_at)
                self._changed = True
        for session_id, body in batch["sessions"]:
            if session_id not in self._sessions:
                self._sessions[session_id] = body
                self._changed = True
        for key, payload in batch["contexts"]:
            if key not in self._contexts:
                self._contexts[key] = payload
                self._changed = True

    def _probe(self) -> None:
        """A tiny commit, to learn whether the disk takes writes again."""
        conn = self._conn
        assert conn is not None
        conn.execute(
            "INSERT INTO meta(key, value) VALUES ('probe', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (str(self.failed_commits),),
        )

    def _write_batch(self, batch: dict[str, Any]) -> None:
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN")
        try:
            conn.executemany(
                "INSERT INTO tasks(task_id, status, finished_at, body) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(task_id) DO UPDATE SET status = excluded.status, "
                "finished_at = excluded.finished_at, body = excluded.body",
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
            if conn.in_transaction:  # sqlite may already have rolled back (disk full)
                conn.execute("ROLLBACK")
            raise

    # -- retention ---------------------------------------------------------------------------
    def add_sweep_listener(self, listener: Callable[[list[tuple]], None]) -> None:
        self.on_swept.append(listener)

    async def _sweeper(self) -> None:
        """A bounded periodic job (the one kind of timer loop allowed): sweep, then sleep."""
        while not self._closing:
            with anyio.move_on_after(self.retention.sweep_every):
                await self._closed.wait()  # closing ends the wait early
            if not self._closing:
                await self.sweep()

    async def sweep(self) -> int:
        """Delete finished tasks past the retention policy, batch by batch, then return the
        freed pages to the file system step by step; each step is one short worker-thread call
        between the writer's commits. Returns how many tasks were deleted."""
        deleted = 0
        try:
            while not self._closing:
                gone = await anyio.to_thread.run_sync(self._sweep_step, limiter=self._limiter)
                if not gone:
                    break
                deleted += len(gone)
                for listener in self.on_swept:
                    listener(gone)
            while not self._closing and await anyio.to_thread.run_sync(
                self._reclaim_step, limiter=self._limiter
            ):
                pass
        except sqlite3.Error as exc:  # e.g. the disk is full: the next sweep tries again
            logger.warning("retention sweep of %s stopped: %s", self.path, exc)
        if deleted:
            logger.info("retention removed %d finished task(s) from %s", deleted, self.path)
        return deleted

    def _sweep_step(self) -> list[tuple]:
        if self._conn is None:  # closed meanwhile
            return []
        return delete_expired(self._conn, self.retention, time.time())

    def _reclaim_step(self) -> bool:
        return self._conn is not None and reclaim_step(self._conn)
