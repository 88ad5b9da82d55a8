"""Where tasks, sessions and signed workflow contexts are written through.

`save_*` calls return at once (they only record what changed); a durable store writes the
changes in batches off the event loop, and `flush()` waits until everything recorded so far is
committed, or raises `StoreUnavailable` when the commit holding it failed. `MemoryStore` keeps
nothing beyond the in-memory tables (tests, ephemeral use).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from anyio.abc import TaskGroup

if TYPE_CHECKING:
    from gateway.control_plane.sessions import SessionRecord
    from gateway.control_plane.tasks import TaskRecord


class StoreUnavailable(Exception):
    """A commit failed (disk full, I/O error): whoever waited on it must refuse its work."""


@dataclass(frozen=True)
class TaskFilter:
    """What `GET /control_plane/tasks` asks for (see gateway/web/paging.py)."""

    status: str | None = None
    service: str | None = None
    session_id: str | None = None
    sort: str = "created_at"
    descending: bool = True
    limit: int = 50
    offset: int = 0
    #: cursor position (sort value, task_id): only tasks after it in this order
    after: tuple[float, str] | None = None


class Store:
    durable = False
    #: False from a failed commit until a write succeeds again (`/readyz` answers 503 meanwhile).
    writable = True
    #: Commits that failed since start (exported as a metric).
    failed_commits = 0

    async def open(self, task_group: TaskGroup) -> None:
        """Prepare (create tables, start the writer inside the gateway's task group)."""

    async def close(self) -> None:
        """Commit what is pending."""

    async def flush(self) -> None:
        """Return once every change recorded so far is committed; raise `StoreUnavailable` if
        the commit holding them failed."""

    def add_sweep_listener(self, listener: Callable[[list[tuple]], None]) -> None:
        """`listener` hears the (task_id, session_id) rows each retention sweep deleted (a
        store without retention never calls it)."""

    def save_task(self, record: TaskRecord, *, new: bool = False) -> None:
        """Record a task. `new`: its first save, made before the submission is answered; if that
        commit fails the record is dropped (the submitter refuses the task) instead of retried."""

    def load_task(self, task_id: str) -> TaskRecord | None:
        return None

    async def list_tasks(self, query: TaskFilter) -> tuple[list[TaskRecord], int] | None:
        """One page of the tasks the store keeps, and how many match; None: the store keeps
        no task list (the control plane's table is then the list)."""
        return None

    async def list_sessions(
        self, descending: bool, offset: int, limit: int, after: tuple[float, str] | None = None
    ) -> tuple[list[SessionRecord], int] | None:
        """A page of the sessions a shared store keeps (ordered by creation, then id) and how
        many there are; None: the control plane's table is the list (one process)."""
        return None

    def unfinished_tasks(self) -> list[TaskRecord]:
        return []

    def load_sessions(self) -> list[SessionRecord]:
        return []

    def save_session(self, record: SessionRecord, payload: str | None = None) -> None:
        """Persist `record`; `payload`, when given, is its JSON, already serialized off the loop."""

    def delete_session(self, session_id: str) -> None: ...

    def save_context(self, session_id: str, service: str, payload: str) -> None: ...

    def delete_context(self, session_id: str, service: str) -> None:
        """Forget one saved context (a session reset: its state no longer verifies)."""

    def load_context(self, session_id: str, service: str) -> str | None:
        return None
