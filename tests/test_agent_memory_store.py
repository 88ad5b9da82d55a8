"""Agent chat memory goes through the store: it survives a restart, is signed, and is deleted
with its session."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import agent_with_calc, gateway_client
from tests.test_agent_service import ask, new_session, user_turns

pytestmark = pytest.mark.anyio


def config(db: Path, **extra: Any) -> dict[str, Any]:
    return {
        "store": {"kind": "sqlite", "path": str(db)},
        "services": agent_with_calc(**extra),
    }


async def test_session_memory_survives_a_restart_with_the_same_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_SECRET", "memory-test-secret")
    db = tmp_path / "gw.db"
    async with gateway_client(config(db)) as client:
        session = await new_session(client)
        assert (await ask(client, "What is 2+3?", session))["result"] == "The answer is 5."
    async with gateway_client(config(db)) as client:  # a new process, same database
        again = await ask(client, "What is ans*10?", session)
    assert again["result"] == "The answer is 50.", "agent memory was lost across the restart"
    assert user_turns(again["history"]) == ["What is 2+3?", "What is ans*10?"]


async def test_a_tampered_history_is_refused_and_the_task_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_SECRET", "memory-test-secret")
    apps: list = []
    async with gateway_client(config(tmp_path / "gw.db"), app_out=apps) as client:
        session = await new_session(client)
        await ask(client, "What is 2+3?", session)
        store = apps[0].state.runtime.control_plane.store
        saved = json.loads(store.load_context(session, "assistant"))
        history = json.loads(saved["state"])
        history[0]["blocks"] = [{"block_type": "text", "text": "What is 900+3?"}]
        saved["state"] = json.dumps(history)  # the signature no longer matches
        store.save_context(session, "assistant", json.dumps(saved))
        apps[0].state.runtime.services["assistant"].forget_session(session)  # drop the cache
        refused = await ask(client, "What is ans*10?", session)
        listing = await client.get(
            "/services/assistant/messages", params={"session_id": session, "order": "asc"}
        )
    assert refused["status"] == "failed"
    assert "HMAC-SHA256" in refused["error"]
    assert listing.status_code == 409


async def test_deleting_the_session_deletes_the_agent_memory(tmp_path: Path) -> None:
    async with gateway_client(config(tmp_path / "gw.db")) as client:
        session = await new_session(client)
        await ask(client, "What is 2+3?", session)
        deleted = await client.delete(f"/control_plane/sessions/{session}")
        assert deleted.status_code == 200
        # the same id can no longer be used, and nothing of it is left in the service
        gone = await client.post(
            "/services/assistant/run", json={"input": "What is ans*10?", "session_id": session}
        )
        messages = await client.get(
            "/services/assistant/messages", params={"session_id": session, "order": "asc"}
        )
    assert gone.status_code == 404
    assert messages.json()["items"] == []


async def test_only_a_bounded_number_of_sessions_stay_cached(tmp_path: Path) -> None:
    apps: list = []
    cfg = config(tmp_path / "gw.db", max_cached_sessions=2)
    async with gateway_client(cfg, app_out=apps) as client:
        sessions = [await new_session(client) for _ in range(4)]
        for n, session in enumerate(sessions):
            await ask(client, f"What is {n}+1?", session)
        agent = apps[0].state.runtime.services["assistant"]
        assert len(agent._sessions) <= 2
        # an evicted session is loaded back from the store when used again
        first = await ask(client, "What is ans*10?", sessions[0])
    assert first["result"] == "The answer is 10.", "an evicted session lost its memory"
