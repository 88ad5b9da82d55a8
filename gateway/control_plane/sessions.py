"""Sessions: a named group of tasks with a JSON state dict and per-service saved contexts."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, Field

from gateway.messages import SessionDefinition, new_id


class SessionRecord(BaseModel):
    session_id: str = Field(default_factory=new_id)
    task_ids: list[str] = Field(default_factory=list)
    state: dict[str, Any] = Field(default_factory=dict)
    created_at: float = Field(default_factory=time.time)

    def definition(self) -> SessionDefinition:
        return SessionDefinition(
            session_id=self.session_id, task_ids=list(self.task_ids), state=self.state
        )


class SessionTable:
    def __init__(self) -> None:
        self._sessions: dict[str, SessionRecord] = {}

    def create(self, session_id: str | None = None) -> SessionRecord:
        record = SessionRecord(session_id=session_id or new_id())
        self._sessions[record.session_id] = record
        return record

    def add(self, record: SessionRecord) -> None:
        self._sessions[record.session_id] = record

    def get(self, session_id: str) -> SessionRecord | None:
        return self._sessions.get(session_id)

    def delete(self, session_id: str) -> SessionRecord | None:
        return self._sessions.pop(session_id, None)

    def page(self, limit: int, offset: int) -> list[SessionRecord]:
        return list(self._sessions.values())[offset : offset + limit]

    def __len__(self) -> int:
        return len(self._sessions)

    def all(self) -> list[SessionRecord]:
        return list(self._sessions.values())
