"""Workflow state across the tasks of a session: JSON-serialized Context, HMAC-SHA256 signed.

The counting workflow (examples.counter) keeps `turns` in its Context: in one session it says
1, 2, 3; sessions count separately; a stored context that was modified is refused (the task
fails with an HMAC error and the modified state is never loaded); the signing key is
GATEWAY_SECRET, so state resumes across gateway instances with the same secret only.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from workflows import Context

from gateway.messages import WorkflowState
from gateway.store.signing import sign
from tests.conftest import gateway_client
from tests.fixtures_sessions import (
    config,
    create_session,
    new_probe,
    submit,
    wait_result,
    wait_status,
)

pytestmark = pytest.mark.anyio

COUNTER = {"counter": {"source": "examples.counter:workflow", "max_concurrent_tasks": 4}}


async def _turn(client, session_id: str | None, message: str = "") -> dict:
    body = {"kwargs": {"message": message}, "wait": 10}
    if session_id:
        body["session_id"] = session_id
    response = await client.post("/services/counter/run", json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def _turns(client, session_id: str | None) -> int:
    answer = await _turn(client, session_id)
    assert answer["status"] == "completed", answer
    return answer["result"]["turns"]


@pytest.fixture
def from_dict_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Every Context.from_dict call (what a saved state being *loaded* looks like)."""
    calls: list[dict] = []
    original = Context.from_dict.__func__

    def spy(cls, workflow, data, *args, **kwargs):
        calls.append(data)
        return original(cls, workflow, data, *args, **kwargs)

    monkeypatch.setattr(Context, "from_dict", classmethod(spy))
    return calls


def _turns_in(payload: str) -> int:
    state = json.loads(WorkflowState.model_validate_json(payload).state or "{}")
    return int(json.loads(state["state"]["state_data"]["_data"]["turns"]))


def _with_turns(payload: str, turns: int, resign_with: bytes | None = None) -> str:
    """The saved payload with `turns` changed (signature kept unless `resign_with`)."""
    saved = WorkflowState.model_validate_json(payload)
    state = json.loads(saved.state or "{}")
    state["state"]["state_data"]["_data"]["turns"] = json.dumps(turns)
    text = json.dumps(state)
    new_hash = sign(resign_with, text) if resign_with else saved.hash
    return saved.model_copy(update={"state": text, "hash": new_hash}).model_dump_json()


async def test_three_tasks_in_one_session_count_1_2_3() -> None:
    async with gateway_client(config(COUNTER)) as client:
        session_id = await create_session(client)
        answers = [await _turn(client, session_id, m) for m in ("a", "b", "c")]
        assert [a["result"] for a in answers] == [
            {"turns": 1, "said": "a"},
            {"turns": 2, "said": "b"},
            {"turns": 3, "said": "c"},
        ]
        # the same through the session's task route
        task_id = (
            await client.post(
                f"/control_plane/sessions/{session_id}/tasks",
                json={"input": {"message": "d"}, "service": "counter"},
            )
        ).json()
        result = (await client.get(f"/control_plane/tasks/{task_id}/result?wait=10")).json()
        assert result["result"] == {"turns": 4, "said": "d"}
        # without a session nothing is remembered
        assert [await _turns(client, None) for _ in range(2)] == [1, 1]


async def test_sessions_count_separately() -> None:
    async with gateway_client(config(COUNTER)) as client:
        a, b = await create_session(client), await create_session(client)
        seen = [(s, await _turns(client, sid)) for s, sid in [("a", a), ("b", b)] * 3]
        assert seen == [("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3), ("b", 3)]
        c = await create_session(client)
        assert await _turns(client, c) == 1


async def test_deleting_a_session_drops_its_saved_context() -> None:
    apps: list = []
    async with gateway_client(config(COUNTER), app_out=apps) as client:
        store = apps[0].state.runtime.control_plane.store
        session_id = await create_session(client)
        await _turns(client, session_id)
        assert store.load_context(session_id, "counter") is not None
        await client.delete(f"/control_plane/sessions/{session_id}")
        assert store.load_context(session_id, "counter") is None


async def test_a_task_ending_after_its_session_was_deleted_saves_no_state() -> None:
    probe = new_probe("deleted")
    apps: list = []
    cfg = config({"gated": {"source": "gated"}})
    async with gateway_client(cfg, app_out=apps) as client:
        store = apps[0].state.runtime.control_plane.store
        session_id = await create_session(client)
        task_id = await submit(client, "gated", {"key": "deleted", "label": "x"}, session_id)
        await wait_status(client, task_id, "running")
        assert (await client.delete(f"/control_plane/sessions/{session_id}")).status_code == 200
        probe.gate("x").set()
        # the run in flight is stopped with the session (tests/test_session_delete.py)
        assert (await wait_result(client, task_id))["status"] == "cancelled"
        # "delete a session and its saved state": the run that was in flight does not bring
        # the state back
        assert store.load_context(session_id, "gated") is None


async def test_a_tampered_context_is_refused_and_never_loaded(from_dict_calls) -> None:
    apps: list = []
    async with gateway_client(config(COUNTER), app_out=apps) as client:
        runtime = apps[0].state.runtime
        store = runtime.control_plane.store
        session_id = await create_session(client)
        assert [await _turns(client, session_id) for _ in range(2)] == [1, 2]
        genuine = store.load_context(session_id, "counter")
        assert _turns_in(genuine) == 2
        loads_before = len(from_dict_calls)

        # an attacker with write access to the store raises the count, keeping the old MAC
        tampered = _with_turns(genuine, 41)
        store.save_context(session_id, "counter", tampered)
        answer = await _turn(client, session_id)
        assert answer["status"] == "failed"
        assert "HMAC" in answer["error"]
        assert answer["result"] is None
        assert len(from_dict_calls) == loads_before, "the tampered state was deserialized"
        # the refused state is left as it was: not replaced by a fresh context either
        assert store.load_context(session_id, "counter") == tampered
        task_id = answer["task_id"]
        record = (await client.get(f"/control_plane/tasks/{task_id}")).json()
        assert record["status"] == "failed" and "HMAC" in record["error"]

        # a signature stripped off, or a garbage one, is refused just the same
        for bad_hash in (None, "", "0" * 64):
            unsigned = WorkflowState.model_validate_json(genuine).model_copy(
                update={"hash": bad_hash}
            )
            store.save_context(session_id, "counter", unsigned.model_dump_json())
            refused = await _turn(client, session_id)
            assert refused["status"] == "failed" and "HMAC" in refused["error"], bad_hash
        assert len(from_dict_calls) == loads_before

        # control: the same modification signed with the gateway's key *is* loaded, so it is
        # the signature check (nothing else) that kept the tampered state out
        store.save_context(session_id, "counter", _with_turns(genuine, 41, runtime.secret))
        assert await _turns(client, session_id) == 42
        assert len(from_dict_calls) == loads_before + 1


async def test_gateway_secret_keys_the_state_across_instances(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config(COUNTER, store={"kind": "sqlite", "path": str(tmp_path / "gw.db")})

    monkeypatch.setenv("GATEWAY_SECRET", "first secret")
    async with gateway_client(cfg) as client:
        session_id = await create_session(client)
        assert [await _turns(client, session_id) for _ in range(2)] == [1, 2]

    # a new instance, same file, same secret: the session and its count carry on
    async with gateway_client(cfg) as client:
        assert session_id in (await client.get("/control_plane/sessions")).json()
        assert await _turns(client, session_id) == 3

    # same file, another secret: the saved state does not verify and is refused
    monkeypatch.setenv("GATEWAY_SECRET", "another secret")
    async with gateway_client(cfg) as client:
        answer = await _turn(client, session_id)
        assert answer["status"] == "failed"
        assert "HMAC" in answer["error"]

    # no secret: a random key (with a warning), so nothing saved before can be trusted
    monkeypatch.delenv("GATEWAY_SECRET")
    with caplog.at_level(logging.WARNING, logger="gateway.store.signing"):
        async with gateway_client(cfg) as client:
            answer = await _turn(client, session_id)
            assert answer["status"] == "failed" and "HMAC" in answer["error"]
    assert any("GATEWAY_SECRET is not set" in r.getMessage() for r in caplog.records)

    # the original secret still reads the original state (the refusals overwrote nothing)
    monkeypatch.setenv("GATEWAY_SECRET", "first secret")
    async with gateway_client(cfg) as client:
        assert await _turns(client, session_id) == 4
