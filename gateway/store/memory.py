"""The store that keeps nothing beyond the in-memory tables (tests, ephemeral use)."""

from __future__ import annotations

from gateway.store import Store


class MemoryStore(Store):
    """Keeps saved contexts in a dict; everything else lives in the control plane's tables."""

    def __init__(self) -> None:
        self._contexts: dict[tuple[str, str], str] = {}

    def save_context(self, session_id: str, service: str, payload: str) -> None:
        self._contexts[(session_id, service)] = payload

    def load_context(self, session_id: str, service: str) -> str | None:
        return self._contexts.get((session_id, service))

    def delete_context(self, session_id: str, service: str) -> None:
        self._contexts.pop((session_id, service), None)

    def delete_session(self, session_id: str) -> None:
        for key in [k for k in self._contexts if k[0] == session_id]:
            del self._contexts[key]
