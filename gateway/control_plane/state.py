"""Session state: bounded in size, serialized off the event loop, merged one at a time.

A session's state is one JSON object that clients merge keys into. Serializing a large one takes
milliseconds, which on the event loop would stall every other request (twenty 1 MB merges held
`/healthz` up for 300 ms), so merges and reads serialize in a worker thread. Merges of one
session run one at a time, so none is lost while another serializes; a merged state past
`max_state_bytes` is refused with 413 before anything changes.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from gateway.control_plane.sessions import SessionRecord
from gateway.web.errors import ApiError

if TYPE_CHECKING:
    from gateway.control_plane.plane import ControlPlane


def state_json(state: dict[str, Any]) -> bytes:
    """The state as JSON (the separators and encoding Starlette's JSONResponse uses)."""
    return json.dumps(state, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def state_body(state: bytes) -> bytes:
    """The `{"state": ...}` response body around an already serialized state."""
    return b'{"state":' + state + b"}"


def _serialize(record: SessionRecord) -> tuple[bytes, str]:
    return state_json(record.state), record.model_dump_json()


class SessionStates:
    def __init__(self, control_plane: ControlPlane, max_state_bytes: int = 1_048_576) -> None:
        self.control_plane = control_plane
        self.max_state_bytes = max_state_bytes
        self._locks: dict[str, anyio.Lock] = {}

    async def read(self, session_id: str) -> bytes:
        """The `{"state": ...}` body of a session."""
        record = await self.control_plane.find_session(session_id)
        return state_body(await anyio.to_thread.run_sync(state_json, dict(record.state)))

    async def merge(self, session_id: str, patch: dict[str, Any]) -> bytes:
        """Merge `patch` into the state; answers the `{"state": ...}` body of the new state."""
        lock = self._locks.setdefault(session_id, anyio.Lock())
        try:
            async with lock:
                return await self._merge(session_id, patch)
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._locks.pop(session_id, None)

    async def _merge(self, session_id: str, patch: dict[str, Any]) -> bytes:
        cp = self.control_plane
        record = await cp.find_session(session_id)
        candidate = record.model_copy(
            update={"state": {**record.state, **patch}, "task_ids": list(record.task_ids)}
        )
        body, payload = await anyio.to_thread.run_sync(_serialize, candidate)
        if len(body) > self.max_state_bytes:
            raise ApiError(
                413,
                f"the merged state would be {len(body)} bytes, over the limit of "
                f"{self.max_state_bytes} (max_state_bytes); nothing was changed",
            )
        record = await cp.find_session(session_id)  # still there? (404 if deleted meanwhile)
        if record.task_ids != candidate.task_ids:  # a task joined meanwhile: keep it
            candidate.task_ids = list(record.task_ids)
            payload = None
        record.state = candidate.state
        cp.store.save_session(record, payload=payload)
        return state_body(body)
