"""Smaller containment points: session state size, slow bodies, a human answer racing a cancel,
and start-up errors that end with their one line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.conftest import ROOT, free_port, gateway_client, running_server
from tests.fixtures_faults import assert_error
from tests.fixtures_human import wait_for_tasks

ECHO = {"echo": {"type": "workflow", "source": "examples.echo:workflow"}}


# -- session state --------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_session_state_past_max_state_bytes_is_413_and_unchanged() -> None:
    cfg = {"services": ECHO, "max_state_bytes": 10_000, "max_body_bytes": 100_000}
    async with gateway_client(cfg) as client:
        session_id = (await client.post("/control_plane/sessions")).json()["session_id"]
        url = f"/control_plane/sessions/{session_id}/state"
        ok = await client.post(url, json={"state": {"a": "x" * 6_000}})
        assert ok.status_code == 200 and len(ok.json()["state"]["a"]) == 6_000
        too_big = await client.post(url, json={"state": {"b": "y" * 6_000}})
        assert "max_state_bytes" in assert_error(too_big, 413)["detail"]
        assert set((await client.get(url)).json()["state"]) == {"a"}  # nothing changed
        # replacing a key with a smaller value is fine
        assert (await client.post(url, json={"state": {"a": "z"}})).json() == {"state": {"a": "z"}}


@pytest.mark.anyio
async def test_concurrent_merges_lose_nothing() -> None:
    cfg = {"services": ECHO, "max_body_bytes": 2_000_000}
    async with gateway_client(cfg) as client:
        session_id = (await client.post("/control_plane/sessions")).json()["session_id"]
        url = f"/control_plane/sessions/{session_id}/state"

        async def merge(n: int) -> None:
            response = await client.post(url, json={"state": {f"k{n}": "v" * 20_000}})
            assert response.status_code == 200

        async with anyio.create_task_group() as group:
            for n in range(20):
                group.start_soon(merge, n)
        assert set((await client.get(url)).json()["state"]) == {f"k{n}" for n in range(20)}


@pytest.mark.anyio
async def test_state_is_serialized_off_the_event_loop(monkeypatch) -> None:
    """A large state costs milliseconds to serialize: merges and reads do it in a worker
    thread, never on the loop that serves every other request."""
    import threading

    from gateway.control_plane import state

    threads: list[str] = []
    original = state.state_json

    def recording(value: dict[str, Any]) -> bytes:
        threads.append(threading.current_thread().name)
        return original(value)

    monkeypatch.setattr(state, "state_json", recording)
    async with gateway_client({"services": ECHO, "max_body_bytes": 2_000_000}) as client:
        session_id = (await client.post("/control_plane/sessions")).json()["session_id"]
        url = f"/control_plane/sessions/{session_id}/state"
        assert (await client.post(url, json={"state": {"k": list(range(100_000))}})).is_success
        assert len((await client.get(url)).json()["state"]["k"]) == 100_000
    assert len(threads) == 2
    assert threading.main_thread().name not in threads


# -- slow bodies ----------------------------------------------------------------------------------
def test_a_body_that_never_finishes_is_cut_off(tmp_path: Path) -> None:
    cfg = {"services": ECHO, "body_timeout": 1}
    with running_server(cfg, tmp_path) as server:
        port = int(server.base_url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                b"POST /control_plane/tasks HTTP/1.1\r\nHost: x\r\n"
                b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"in'
            )
            reply = b""
            while chunk := sock.recv(4096):  # the server answers, then closes the connection
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 408"), reply
        assert b'"request_timeout"' in reply


# -- a human answer racing a cancel ---------------------------------------------------------------
def human_config() -> dict[str, Any]:
    return {
        "shutdown_grace": 0.2,
        "services": {
            "flow": {
                "type": "workflow",
                "source": "examples.approval:workflow",
                "human_service": "desk",
            },
            "desk": {"type": "human"},
        },
    }


@pytest.mark.anyio
async def test_an_answer_after_the_workflow_was_cancelled_gets_409() -> None:
    async with gateway_client(human_config()) as client:
        accepted = await client.post(
            "/control_plane/tasks", json={"service": "flow", "input": {"request": "deploy"}}
        )
        task_id = accepted.json()["task_id"]
        [question] = await wait_for_tasks(client, "desk", 1)
        cancelled = await client.post(f"/control_plane/tasks/{task_id}/cancel")
        assert cancelled.status_code == 200
        # at once, before the withdrawal has travelled to the human service
        late = await client.post(
            f"/services/desk/tasks/{question['task_id']}/handle", json={"result": "yes"}
        )
        assert_error(late, 409)
        info = (await client.get(f"/services/desk/tasks/{question['task_id']}")).json()
        assert info["status"] == "cancelled"
        record = (await client.get(f"/control_plane/tasks/{task_id}")).json()
        assert record["status"] == "cancelled"


@pytest.mark.anyio
@pytest.mark.parametrize("first", ["answer", "cancel"])
async def test_answer_and_cancel_of_a_human_task_exactly_one_wins(first: str) -> None:
    async with gateway_client(human_config()) as client:
        accepted = await client.post(
            "/control_plane/tasks", json={"service": "desk", "input": "approve?"}
        )
        task_id = accepted.json()["task_id"]
        await wait_for_tasks(client, "desk", 1)
        responses: dict[str, httpx.Response] = {}

        async def answer() -> None:
            url = f"/services/desk/tasks/{task_id}/handle"
            responses["answer"] = await client.post(url, json={"result": "ok"})

        async def cancel() -> None:
            responses["cancel"] = await client.post(f"/control_plane/tasks/{task_id}/cancel")

        async with anyio.create_task_group() as group:  # both in flight at once
            for step in (answer, cancel) if first == "answer" else (cancel, answer):
                group.start_soon(step)
        codes = sorted(r.status_code for r in responses.values())
        assert codes == [200, 409], {k: r.text for k, r in responses.items()}
        record = (await client.get(f"/control_plane/tasks/{task_id}")).json()
        winner = "answer" if responses["answer"].status_code == 200 else "cancel"
        assert record["status"] == ("completed" if winner == "answer" else "cancelled")
        info = (await client.get(f"/services/desk/tasks/{task_id}")).json()
        assert info["status"] == record["status"]


# -- start-up errors ------------------------------------------------------------------------------
def test_an_empty_tokens_variable_prints_its_error_last(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "auth: {tokens_env: EMPTY_TOKENS}\n"
        "services:\n  echo: {type: workflow, source: examples.echo:workflow}\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_SECRET"}
    env.update(EMPTY_TOKENS="", PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(config), "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stdout.strip().splitlines()
    assert lines[-1].startswith("error: ") and "EMPTY_TOKENS" in lines[-1], lines[-5:]
