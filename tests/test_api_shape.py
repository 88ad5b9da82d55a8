"""The API conventions of the README ("API conventions"), checked across endpoints.

One error shape (`detail` a string, `errors` for validation), one page shape for every list
(`{items, total}`, newest first, `sort`/`order`/`limit`/`offset`), one task shape (input as
sent, `result` the output), `service` everywhere, event payloads without a `_data` wrapper,
unknown keys refused.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from workflows import Context, Workflow, step
from workflows.events import Event, StartEvent, StopEvent

from tests.conftest import gateway_client
from tests.fixtures_sessions import parse_sse

pytestmark = pytest.mark.anyio


class Loud(Workflow):
    """Writes an event whose fields live only in llama-index's private `_data` dict."""

    @step
    async def go(self, ctx: Context, ev: StartEvent) -> StopEvent:
        ctx.write_event_to_stream(Event(note="loud", level=3))
        return StopEvent(result={"done": True})


loud = Loud(timeout=10)

CONFIG: dict[str, Any] = {
    "name": "shape",
    "default_service": "echo",
    "services": {
        "echo": {"type": "workflow", "source": "examples.echo:workflow"},
        "loud": {"type": "workflow", "source": "tests.test_api_shape:loud"},
    },
}


async def _run(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/control_plane/tasks", json=body)
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    done = await client.get(f"/control_plane/tasks/{task_id}/result", params={"wait": 10})
    assert done.status_code == 200, done.text
    return done.json()


async def test_every_list_pages_the_same_way_newest_first() -> None:
    async with gateway_client(CONFIG) as client:
        session = (await client.post("/control_plane/sessions")).json()["session_id"]
        other = (await client.post("/control_plane/sessions")).json()["session_id"]
        ids = []
        for n, sid in enumerate([None, session, session]):
            body: dict[str, Any] = {"input": {"message": f"m{n}"}}
            if sid:
                body["session_id"] = sid
            ids.append((await _run(client, body))["task_id"])

        page = (await client.get("/control_plane/tasks")).json()
        assert set(page) == {"items", "total", "next"} and page["total"] == 3
        assert page["next"] is None  # one page holds them all; else it is the `after` cursor
        assert [t["task_id"] for t in page["items"]] == ids[::-1]  # newest first
        oldest = (await client.get("/control_plane/tasks", params={"order": "asc"})).json()
        assert [t["task_id"] for t in oldest["items"]] == ids
        cut = await client.get("/control_plane/tasks", params={"limit": 1, "offset": 1})
        assert [t["task_id"] for t in cut.json()["items"]] == [ids[1]]
        assert cut.json()["total"] == 3
        in_session = await client.get("/control_plane/tasks", params={"session_id": session})
        assert [t["task_id"] for t in in_session.json()["items"]] == [ids[2], ids[1]]
        by_end = await client.get("/control_plane/tasks", params={"sort": "finished_at"})
        assert [t["task_id"] for t in by_end.json()["items"]] == ids[::-1]
        for bad in ({"sort": "input"}, {"order": "up"}, {"limit": 0}):
            refused = await client.get("/control_plane/tasks", params=bad)
            assert refused.status_code == 422 and next(iter(bad)) in refused.json()["detail"]

        sessions = (await client.get("/control_plane/sessions/list")).json()
        assert [s["session_id"] for s in sessions["items"]] == [other, session]
        assert sessions["total"] == 2
        # the reference-compatible listing keeps its id -> session shape
        assert set((await client.get("/control_plane/sessions")).json()) == {session, other}


async def test_a_task_shows_its_input_as_sent_and_its_output_as_result() -> None:
    async with gateway_client(CONFIG) as client:
        as_object = await _run(client, {"service": "echo", "input": {"message": "hi"}})
        as_text = await _run(client, {"service": "echo", "input": '{"message": "hi"}'})
        run = await client.post("/services/loud/run", json={"kwargs": {}})
    assert (as_object["input"], as_object["result"]) == ({"message": "hi"}, "hi")
    assert (as_text["input"], as_text["result"]) == ('{"message": "hi"}', "hi")
    assert as_object["service"] == "echo" and "agent_id" not in as_object
    assert run.json()["result"] == {"done": True} and "data" not in run.json()
    expected = {
        "task_id",
        "service",
        "session_id",
        "input",
        "status",
        "result",
        "error",
        "history",
        "created_at",
        "started_at",
        "finished_at",
        "trace_id",
    }
    assert set(as_object) == set(run.json()) == expected


async def test_event_payloads_carry_their_fields_without_a_data_wrapper() -> None:
    async with gateway_client(CONFIG) as client:
        task_id = (await _run(client, {"service": "loud", "input": {}}))["task_id"]
        stream = await client.get(f"/control_plane/tasks/{task_id}/events")
    events = parse_sse(stream.text.splitlines())
    [loud_event] = [data for kind, data in events if kind == "event"]
    assert loud_event["data"] == {"note": "loud", "level": 3}
    kind, final = events[-1]
    assert kind == "result"
    assert final["data"] == {"status": "completed", "result": {"done": True}, "error": None}


async def test_unknown_keys_are_refused_naming_them() -> None:
    async with gateway_client(CONFIG) as client:
        forgot_wrapper = await client.post("/services/echo/run", json={"message": "hello"})
        typo = await client.post("/control_plane/tasks", json={"input": {}, "servise": "echo"})
        info = (await client.get("/services/echo/")).json()
    assert forgot_wrapper.status_code == 422
    body = forgot_wrapper.json()
    assert body["error"] == "validation_error"
    assert body["detail"] == "body.message: Extra inputs are not permitted"
    assert body["errors"] == [
        {
            "loc": ["body", "message"],
            "msg": "Extra inputs are not permitted",
            "type": "extra_forbidden",
        }
    ]
    assert typo.status_code == 422 and "servise" in typo.json()["detail"]
    assert "step_interval" not in info
