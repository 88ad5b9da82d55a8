"""Where tasks, sessions and signed workflow contexts are written through.

`save_*` calls return at once (they only record what changed); a durable store writes the
changes in batches off the event loop, and `flush()` waits until everything recorded so far is
committed. `MemoryStore` keeps nothing beyond the in-memory tables (tests, ephemeral use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from anyio.abc import TaskGroup

if TYPE_CHECKING:
    from gateway.sessions import SessionRecord
    from gateway.tasks import TaskRecord


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


class MemoryStore(Store):
    """Keeps saved contexts in a dict; everything else lives in the control plane's tables."""

    def __init__(self) -> None:
        self._contexts: dict[tuple[str, str], str] = {}

    def save_context(self, session_id: str, service: str, payload: str) -> None:
        self._contexts[(session_id, service)] = payload

    def load_context(self, session_id: str, service: str) -> str | None:
        return self._contexts.get((session_id, service))

    def delete_session(self, session_id: str) -> None:
        for key in [k for k in self._contexts if k[0] == session_id]:
            del self._contexts[key]
