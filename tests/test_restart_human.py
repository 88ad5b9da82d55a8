"""A workflow waiting for a person is still waiting after a graceful restart (sqlite store).

Real servers: the approval workflow asks its question; SIGTERM; the gateway parks the run (its
signed context and its question go to the store) instead of waiting out the grace period or
cancelling it. After the restart the question is in the human queue again, the task shows
`waiting_for_human`, and the person's answer completes the run with the right result.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import httpx
import pytest

from tests.conftest import running_server

pytestmark = pytest.mark.anyio

ENV = {"GATEWAY_SECRET": "restart-human-secret"}
CP = "/control_plane"


def _config(db: Path) -> dict:
    return {
        "shutdown_grace": 20,
        "store": {"kind": "sqlite", "path": str(db)},
        "services": {
            "approval": {
                "type": "workflow",
                "source": "examples.approval:workflow",
                "human_service": "approvers",
            },
            "approvers": {"type": "human"},
            "echo": {"type": "workflow", "source": "examples.echo:workflow"},
        },
    }


async def _question(http: httpx.AsyncClient, task_id: str) -> dict:
    deadline = time.monotonic() + 15
    while True:  # bounded: the question appears once the run has taken its first step
        page = (await http.get("/services/approvers/tasks")).json()
        items = page["items"] if isinstance(page, dict) else page
        found = [t for t in items if t["task_id"].startswith(f"{task_id}-human")]
        if found:
            return found[0]
        assert time.monotonic() < deadline, items
        await anyio.sleep(0.05)


async def test_a_question_survives_a_graceful_restart(tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    with running_server(_config(db), tmp_path, env=ENV) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
            accepted = await http.post(
                f"{CP}/tasks", json={"service": "approval", "input": {"request": "deploy v3"}}
            )
            task_id = accepted.json()["task_id"]
            before = await _question(http, task_id)
        stopped_at = time.monotonic()
    # Only a parked run was in flight: the stop did not wait out the 20 s grace period.
    assert time.monotonic() - stopped_at < 10
    assert "parked 1 run(s) waiting for a person" in server.log()

    with running_server(_config(db), tmp_path, env=ENV) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
            after = await _question(http, task_id)
            assert after["prompt"] == before["prompt"]
            record = (await http.get(f"{CP}/tasks/{task_id}")).json()
            assert record["status"] == "waiting_for_human", record
            answered = await http.post(
                f"/services/approvers/tasks/{after['task_id']}/handle", json={"result": "yes"}
            )
            assert answered.status_code == 200, answered.text
            done = (await http.get(f"{CP}/tasks/{task_id}/result", params={"wait": 15})).json()
            assert done["status"] == "completed", done
            assert done["result"] == {"request": "deploy v3", "approved": True, "answer": "yes"}
            # and nothing else was disturbed: the gateway serves as usual
            echo = await http.post("/services/echo/run", json={"kwargs": {"message": "hi"}})
            assert echo.json()["result"] == "hi"


async def test_a_tampered_parked_run_is_refused_and_fails_clearly(tmp_path: Path) -> None:
    """The parked record (its context and the question's text a person approves) is signed
    whole: editing the question in the file fails the task; nothing is loaded or asked."""
    import json
    import sqlite3

    db = tmp_path / "gw.db"
    with running_server(_config(db), tmp_path, env=ENV) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
            accepted = await http.post(
                f"{CP}/tasks", json={"service": "approval", "input": {"request": "deploy v3"}}
            )
            task_id = accepted.json()["task_id"]
            await _question(http, task_id)
    key = f"parked:{task_id}"
    con = sqlite3.connect(db)
    try:
        (payload,) = con.execute(
            "SELECT payload FROM contexts WHERE session_id=?", (key,)
        ).fetchone()
        saved = json.loads(payload)
        record = json.loads(saved["state"])
        for question in record["questions"]:
            question["input"] = "Approve a harmless change?"
        saved["state"] = json.dumps(record)
        con.execute("UPDATE contexts SET payload=? WHERE session_id=?", (json.dumps(saved), key))
        con.commit()
    finally:
        con.close()

    with running_server(_config(db), tmp_path, env=ENV) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
            done = (await http.get(f"{CP}/tasks/{task_id}/result", params={"wait": 15})).json()
            assert done["status"] == "failed", done
            assert "HMAC-SHA256" in done["error"] and "refusing to load" in done["error"]
            page = (await http.get("/services/approvers/tasks")).json()
            items = page["items"] if isinstance(page, dict) else page
            assert items == []
    con = sqlite3.connect(db)
    try:  # refused once, then gone: not tried again at the next start
        assert con.execute("SELECT 1 FROM contexts WHERE session_id=?", (key,)).fetchone() is None
    finally:
        con.close()
