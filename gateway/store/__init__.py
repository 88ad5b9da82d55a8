"""Where tasks, sessions and signed workflow contexts are written through.

`save_*` calls return at once (they only record what changed); a durable store writes the
changes in batches off the event loop, and `flush()` waits until everything recorded so far is
committed. `MemoryStore` keeps nothing beyond the in-memory tables (tests, ephemeral use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from anyio.abc import TaskGroup

if TYPE_CHECKING:
    from gateway.control_plane.sessions import SessionRecord
    from gateway.control_plane.tasks import TaskRecord


class Store:
    durable = False

    async def open(self, task_group: TaskGroup) -> None:
        """Prepare (create tables, start the writer inside the gateway's task group)."""

    async def close(self) -> None:
        """Commit what is pending."""

    async def flush(self) -> None:
        """Return once every change recorded so far is committed."""

    def save_task(self, record: TaskRecord) -> None: ...

    def load_task(self, task_id: str) -> TaskRecord | None:
        return None

    def unfinished_tasks(self) -> list[TaskRecord]:
        return []

    def load_sessions(self) -> list[SessionRecord]:
        return []

    def save_session(self, record: SessionRecord) -> None: ...

    def delete_session(self, session_id: str) -> None: ...

    def save_context(self, session_id: str, service: str, payload: str) -> None: ...

    def load_context(self, session_id: str, service: str) -> str | None:
        return None
