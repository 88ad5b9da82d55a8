"""Deleting a session with tasks queued behind a running one: every unfinished task of the
session ends `cancelled` with the reason, the queued ones never start, the running one is
stopped, and nothing runs for the session afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from tests.conftest import RunningServer, gateway_client, running_server
from tests.fixtures_sessions import (
    config,
    create_session,
    new_probe,
    parse_sse,
    submit,
    summary,
    wait_result,
    wait_status,
)

pytestmark = pytest.mark.anyio

CP = "/control_plane"
SERVICES = {
    "gated": {"source": "gated", "max_concurrent_tasks": 4},
    "stream": {"source": "stream", "max_concurrent_tasks": 4},
}


async def test_deleting_a_session_cancels_its_running_and_two_queued_tasks() -> None:
    probe = new_probe("delete-1")
    async with gateway_client(config(SERVICES)) as client:
        sid = await create_session(client)
        running, *queued = [
            await submit(client, "gated", {"key": "delete-1", "label": label}, sid)
            for label in ("a", "b", "c")
        ]
        await wait_status(client, running, "running")
        assert [(await client.get(f"{CP}/tasks/{t}")).json()["status"] for t in queued] == [
            "pending",
            "pending",
        ]
        deleted = await client.delete(f"{CP}/sessions/{sid}")
        assert deleted.status_code == 200
        assert deleted.json() == {"deleted": sid, "cancelled": [running, *queued]}
        for task_id in (running, *queued):
            record = await wait_result(client, task_id)
            assert record["status"] == "cancelled"
            assert record["error"] == f"cancelled: session {sid!r} was deleted"
        # the gates open now: nothing more runs for the deleted session
        for label in ("a", "b", "c"):
            probe.gate(label).set()
        with anyio.fail_after(5):
            while "end:a" not in probe.log:  # the running one was stopped (its scope cancelled)
                await anyio.sleep(0.01)
        await anyio.sleep(0.1)
        assert probe.log == ["start:a", "end:a"]
        assert (await client.get(f"{CP}/sessions/{sid}")).status_code == 404
        late = await client.post(f"{CP}/sessions/{sid}/tasks", json={"service": "gated"})
        assert late.status_code == 404
        # a second delete is a 404, and the other session's work is untouched
        assert (await client.delete(f"{CP}/sessions/{sid}")).status_code == 404
        other = await create_session(client)
        done = await submit(
            client, "gated", {"key": "delete-1", "label": "z", "hold": False}, other
        )
        assert (await wait_result(client, done))["status"] == "completed"


# -- through a real uvicorn server --------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp: Path = tmp_path_factory.mktemp("delete-server")
    cfg = config(SERVICES, store={"kind": "sqlite", "path": str(tmp / "delete.db")})
    with running_server(cfg, tmp, env={"GATEWAY_SECRET": "delete"}) as running:
        yield running


async def test_live_delete_with_queued_tasks_reference_route(server) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=20) as http:
        sid = await create_session(http)
        running = await submit(http, "stream", {"before": 1, "wait": True}, sid)
        queued = [await submit(http, "stream", {"before": 1}, sid) for _ in range(2)]
        await wait_status(http, running, "running")
        # the reference system's form of delete
        deleted = await http.post(f"{CP}/sessions/{sid}/delete")
        assert deleted.status_code == 200
        assert deleted.json()["cancelled"] == [running, *queued]
        for task_id in queued:
            record = await wait_result(http, task_id)
            assert (record["status"], record["started_at"]) == ("cancelled", None)
            events = parse_sse((await http.get(f"{CP}/tasks/{task_id}/events")).text.splitlines())
            assert summary(events) == ["status:pending", "result:cancelled"]  # never ran
        record = await wait_result(http, running)
        assert record["status"] == "cancelled" and "was deleted" in record["error"]
        # the stopped run is gone: an event sent to it is refused, nothing is left running
        go = await http.post(f"{CP}/tasks/{running}/events", json={"event": "Go"})
        assert go.status_code == 409
        listing = (await http.get(f"{CP}/tasks", params={"status": "running"})).json()
        items = listing.get("items", listing.get("tasks", []))
        assert not [t for t in items if t.get("session_id") == sid]
