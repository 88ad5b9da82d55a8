"""A client of the reference system, pointed at `<gateway>/control_plane`, works unchanged.

`ReferenceClient` knows only the reference's control-plane paths and shapes: it creates a
session, runs a workflow with `input` = JSON-encoded kwargs and `agent_id` = service name, and
reads the result. Nothing in it knows about this gateway's own API.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import anyio
import httpx
import pytest

from tests.conftest import gateway_client
from tests.fixtures_sessions import config, new_probe

pytestmark = pytest.mark.anyio


class ReferenceClient:
    def __init__(self, http: httpx.AsyncClient, control_plane_url: str) -> None:
        self.http = http
        self.base = control_plane_url.rstrip("/")

    async def _get(self, path: str) -> Any:
        response = await self.http.get(self.base + path)
        response.raise_for_status()
        return response.json()

    async def _post(self, path: str, body: Any = None) -> Any:
        response = await self.http.post(self.base + path, json=body)
        response.raise_for_status()
        return response.json()

    async def list_services(self) -> dict[str, dict]:
        return await self._get("/services")

    async def get_service(self, name: str) -> dict:
        return await self._get(f"/services/{name}")

    async def create_session(self) -> str:
        return await self._post("/sessions/create")

    async def list_sessions(self) -> dict[str, dict]:
        return await self._get("/sessions")

    async def get_session(self, session_id: str) -> dict:
        return await self._get(f"/sessions/{session_id}")

    async def delete_session(self, session_id: str) -> None:
        await self._post(f"/sessions/{session_id}/delete")

    async def run_workflow(self, session_id: str, service: str, **kwargs: Any) -> str:
        # as the reference's SessionManager does: a whole TaskDefinition, its own task id
        task = {
            "input": json.dumps(kwargs),
            "task_id": str(uuid.uuid4()),
            "session_id": None,
            "agent_id": service,
        }
        task_id = await self._post(f"/sessions/{session_id}/tasks", task)
        assert task_id == task["task_id"]
        return task_id

    async def get_tasks(self, session_id: str) -> list[dict]:
        return await self._get(f"/sessions/{session_id}/tasks")

    async def get_current_task(self, session_id: str) -> dict | None:
        return await self._get(f"/sessions/{session_id}/current_task")

    async def get_task_result(self, session_id: str, task_id: str) -> dict | None:
        return await self._get(f"/sessions/{session_id}/tasks/{task_id}/result")

    async def wait_for_result(self, session_id: str, task_id: str, timeout: float = 10) -> dict:
        deadline = time.monotonic() + timeout
        while (result := await self.get_task_result(session_id, task_id)) is None:
            assert time.monotonic() < deadline, f"no result for {task_id} within {timeout}s"
            await anyio.sleep(0.02)
        return result


SERVICES = {
    "echo": {"source": "examples.echo:workflow"},
    "counter": {"source": "examples.counter:workflow"},
    "gated": {"source": "gated"},
}


async def test_reference_client_runs_workflows_and_reads_results() -> None:
    probe = new_probe("ref")
    async with gateway_client(config(SERVICES)) as http:
        client = ReferenceClient(http, "http://gateway/control_plane")

        services = await client.list_services()
        assert {"echo", "counter", "gated"} <= set(services)
        assert services["echo"]["service_name"] == "echo"
        assert (await client.get_service("counter"))["service_name"] == "counter"

        session_id = await client.create_session()
        assert isinstance(session_id, str) and session_id
        assert session_id in await client.list_sessions()
        assert await client.get_current_task(session_id) is None

        echo_id = await client.run_workflow(session_id, "echo", message="hello there")
        assert isinstance(echo_id, str)
        echoed = await client.wait_for_result(session_id, echo_id)
        assert echoed["task_id"] == echo_id
        assert echoed["result"] == "hello there"
        assert echoed["history"] == []

        counts = []
        for _ in range(2):
            task_id = await client.run_workflow(session_id, "counter", message="hi")
            result = await client.wait_for_result(session_id, task_id)
            counts.append(json.loads(result["result"])["turns"])
        assert counts == [1, 2]

        # while a task is pending, its result is null and it is the session's current task
        held = await client.run_workflow(session_id, "gated", key="ref", label="g")
        assert await client.get_task_result(session_id, held) is None
        current = await client.get_current_task(session_id)
        assert current is not None
        assert current["task_id"] == held
        assert current["agent_id"] == "gated"
        assert current["session_id"] == session_id
        assert json.loads(current["input"]) == {"key": "ref", "label": "g"}
        probe.gate("g").set()
        assert (await client.wait_for_result(session_id, held))["result"] == "g"
        assert await client.get_current_task(session_id) is None

        tasks = await client.get_tasks(session_id)
        assert [t["agent_id"] for t in tasks] == ["echo", "counter", "counter", "gated"]
        assert all({"task_id", "input", "session_id", "agent_id"} <= set(t) for t in tasks)
        assert json.loads(tasks[0]["input"]) == {"message": "hello there"}
        session = await client.get_session(session_id)
        assert session["session_id"] == session_id
        assert session["task_ids"] == [t["task_id"] for t in tasks]

        await client.delete_session(session_id)
        assert session_id not in await client.list_sessions()
        with pytest.raises(httpx.HTTPStatusError) as info:
            await client.get_session(session_id)
        assert info.value.response.status_code == 404


async def test_reference_client_sees_a_failed_task_as_a_result_with_its_error() -> None:
    async with gateway_client(config({"stats": {"source": "examples.pipeline:build"}})) as http:
        client = ReferenceClient(http, "http://gateway/control_plane")
        session_id = await client.create_session()
        task_id = await client.run_workflow(session_id, "stats", numbers=[])
        result = await client.wait_for_result(session_id, task_id)
        assert result["task_id"] == task_id
        assert result["status"] == "failed"
        assert "non-empty" in result["error"]
        ok = await client.run_workflow(session_id, "stats", numbers=[1, 2, 3])
        assert json.loads((await client.wait_for_result(session_id, ok))["result"])["sum"] == 6
