"""A sqlite file belongs to one gateway, lists every task it holds, and keeps its signing key.

- A second gateway on the same file refuses in one line naming the owner's pid, before it
  recovers anything (the live one's tasks are untouched).
- `GET /control_plane/tasks` lists, filters and pages the tasks in the file, from before a
  restart too.
- Without GATEWAY_SECRET a key file beside the database (mode 0600) keeps saved state valid
  across restarts; state signed with another key fails its task with a clear message, and
  `POST /control_plane/sessions/{id}/reset` lets the session start afresh.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.app import build_app
from gateway.config import ConfigError, parse_config
from tests.conftest import ROOT, gateway_client, running_server
from tests.fixtures_sessions import config, create_session, new_probe, submit, wait_result

pytestmark = pytest.mark.anyio

CP = "/control_plane"


def _config(db: Path) -> dict:
    return config(
        {
            "echo": {"source": "examples.echo:workflow"},
            "counter": {"source": "examples.counter:workflow"},
            "gated": {"source": "gated"},
        },
        store={"kind": "sqlite", "path": str(db)},
    )


async def test_a_second_gateway_on_the_same_file_refuses_before_touching_it(
    tmp_path: Path,
) -> None:
    db = tmp_path / "gateway.db"
    probe = new_probe("owner")
    async with gateway_client(_config(db)) as client:
        held = await submit(client, "gated", {"key": "owner", "label": "held"})
        with pytest.raises(ConfigError) as info:
            build_app(parse_config(_config(db), "second.yaml"))
        assert str(info.value) == (
            f"second.yaml: store: gateway.db is in use by another gateway (pid {os.getpid()})"
        )
        # the live gateway's task was not "recovered" by the refused one
        assert (await client.get(f"{CP}/tasks/{held}")).json()["status"] in ("pending", "running")
        probe.gate("held").set()
        assert (await wait_result(client, held))["status"] == "completed"
    # once the owner stopped, the file can be opened again
    async with gateway_client(_config(db)) as client:
        assert (await client.get(f"{CP}/tasks/{held}")).json()["status"] == "completed"


def test_a_second_uvicorn_on_the_same_file_exits_with_one_line(tmp_path: Path) -> None:
    db = tmp_path / "gateway.db"
    cfg = config(
        {"echo": {"source": "examples.echo:workflow"}}, store={"kind": "sqlite", "path": str(db)}
    )
    with running_server(cfg, tmp_path) as server:
        task = httpx.post(
            f"{server.base_url}{CP}/tasks", json={"service": "echo", "input": {"message": "x"}}
        ).json()
        path = tmp_path / "second.yaml"
        path.write_text(yaml.safe_dump(cfg))
        second = subprocess.run(
            [sys.executable, "-m", "uvicorn", "gateway.app:app", "--port", "1"],
            cwd=ROOT,
            env={**os.environ, "GATEWAY_CONFIG": str(path), "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2, second.stderr
        lines = [line for line in (second.stdout + second.stderr).splitlines() if line.strip()]
        assert lines == [
            f"error: {path}: store: gateway.db is in use by another gateway "
            f"(pid {server.process.pid})"
        ]
        done = httpx.get(f"{server.base_url}{CP}/tasks/{task['task_id']}/result?wait=10").json()
        assert (done["status"], done["result"]) == ("completed", "x")


async def test_the_task_list_reads_the_file_after_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "gateway.db"
    async with gateway_client(_config(db)) as client:
        session = await create_session(client)
        ids = [await submit(client, "echo", {"message": f"m{n}"}) for n in range(3)]
        ids.append(await submit(client, "counter", {}, session))
        for task_id in ids:
            await wait_result(client, task_id)
    async with gateway_client(_config(db)) as client:  # a new process, same file
        fresh = await submit(client, "echo", {"message": "new"})
        await wait_result(client, fresh)
        everything = (await client.get(f"{CP}/tasks")).json()
        assert everything["total"] == 5
        assert [t["task_id"] for t in everything["items"]] == [fresh, *ids[::-1]]
        assert everything["items"][-1]["input"] == {"message": "m0"}  # as sent, after a restart
        echo = (await client.get(f"{CP}/tasks", params={"service": "echo", "order": "asc"})).json()
        assert [t["task_id"] for t in echo["items"]] == [*ids[:3], fresh]
        page = (await client.get(f"{CP}/tasks", params={"limit": 2, "offset": 1})).json()
        assert [t["task_id"] for t in page["items"]] == [ids[3], ids[2]]
        assert page["total"] == 5
        in_session = (await client.get(f"{CP}/tasks", params={"session_id": session})).json()
        assert [t["task_id"] for t in in_session["items"]] == [ids[3]]
        done = (await client.get(f"{CP}/tasks", params={"status": "completed"})).json()
        assert done["total"] == 5


async def _turns(client: httpx.AsyncClient, session: str) -> dict:
    body = {"kwargs": {"message": "hi"}, "session_id": session, "wait": 10}
    return (await client.post("/services/counter/run", json=body)).json()


async def test_without_a_secret_a_key_file_keeps_sessions_alive_and_reset_is_the_way_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GATEWAY_SECRET", raising=False)
    db = tmp_path / "gateway.db"
    key_file = tmp_path / "gateway.db.secret"
    async with gateway_client(_config(db)) as client:
        session = await create_session(client)
        assert (await _turns(client, session))["result"]["turns"] == 1
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text()
    async with gateway_client(_config(db)) as client:  # restarted: same key, from the file
        assert (await _turns(client, session))["result"]["turns"] == 2
    assert key_file.read_text() == key

    key_file.write_text("another-key\n")  # the state was signed with the old key
    async with gateway_client(_config(db)) as client:
        refused = await _turns(client, session)
        assert refused["status"] == "failed"
        assert "failed its HMAC-SHA256 check" in refused["error"]
        assert f"POST /control_plane/sessions/{session}/reset" in refused["error"]
        reset = await client.post(f"{CP}/sessions/{session}/reset")
        assert reset.status_code == 200, reset.text
        assert "counter" in reset.json()["services"]
        assert (await _turns(client, session))["result"]["turns"] == 1  # afresh, not dead
        assert (await _turns(client, session))["result"]["turns"] == 2
        assert (await client.post(f"{CP}/sessions/nope/reset")).status_code == 404
