"""The session API: CRUD, state, tasks in a session, every error case, ordering and concurrency."""

from __future__ import annotations

import json

import pytest

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

CP = "/control_plane"
COUNTER = {"counter": {"source": "examples.counter:workflow"}}


def _not_found(response) -> None:
    assert response.status_code == 404, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == "not_found"
    assert body["detail"]


async def test_create_list_get_delete() -> None:
    async with gateway_client(config(COUNTER)) as client:
        assert (await client.get(f"{CP}/sessions")).json() == {}
        ids = [await create_session(client) for _ in range(3)]
        assert len(set(ids)) == 3

        listing = (await client.get(f"{CP}/sessions")).json()
        assert list(listing) == ids
        for session_id, definition in listing.items():
            assert definition == {"session_id": session_id, "task_ids": [], "state": {}}

        pages = [
            (await client.get(f"{CP}/sessions", params={"limit": 2, "offset": off})).json()
            for off in (0, 2, 3)
        ]
        assert [list(p) for p in pages] == [ids[:2], ids[2:], []]
        assert (await client.get(f"{CP}/sessions", params={"limit": 0})).status_code == 422
        assert (await client.get(f"{CP}/sessions", params={"offset": -1})).status_code == 422

        got = await client.get(f"{CP}/sessions/{ids[1]}")
        assert got.status_code == 200
        assert got.json() == {"session_id": ids[1], "task_ids": [], "state": {}}

        deleted = await client.delete(f"{CP}/sessions/{ids[1]}")
        assert deleted.status_code == 200
        assert deleted.json() == {"deleted": ids[1], "cancelled": []}
        _not_found(await client.get(f"{CP}/sessions/{ids[1]}"))
        _not_found(await client.delete(f"{CP}/sessions/{ids[1]}"))
        # the reference's delete route
        assert (await client.post(f"{CP}/sessions/{ids[0]}/delete")).status_code == 200
        assert list((await client.get(f"{CP}/sessions")).json()) == [ids[2]]


async def test_unknown_session_is_404_everywhere_and_creates_nothing() -> None:
    async with gateway_client(config(COUNTER)) as client:
        base = f"{CP}/sessions/nope"
        for path in ("", "/state", "/tasks", "/current_task", "/tasks/t1/result"):
            _not_found(await client.get(base + path))
        _not_found(await client.delete(base))
        _not_found(await client.post(base + "/delete"))
        _not_found(await client.post(base + "/state", json={"state": {"a": 1}}))
        _not_found(await client.post(base + "/tasks", json={"input": "{}", "agent_id": "counter"}))
        # a task naming an unknown session, by every way of submitting one
        _not_found(
            await client.post(f"{CP}/tasks", json={"service": "counter", "session_id": "nope"})
        )
        _not_found(
            await client.post("/services/counter/run", json={"kwargs": {}, "session_id": "nope"})
        )
        # ... is refused, not turned into a silent new session or a task
        assert (await client.get(f"{CP}/sessions")).json() == {}
        assert (await client.get(f"{CP}/tasks")).json()["total"] == 0

        # a known session with a task id that is not its own
        session_id = await create_session(client)
        other = await submit(client, "counter", {})
        await wait_result(client, other)
        _not_found(await client.get(f"{CP}/sessions/{session_id}/tasks/{other}/result"))
        _not_found(await client.get(f"{CP}/sessions/{session_id}/tasks/missing/result"))
        # a session task for an unknown service
        _not_found(
            await client.post(
                f"{CP}/sessions/{session_id}/tasks", json={"input": "{}", "agent_id": "ghost"}
            )
        )
        assert (await client.get(f"{CP}/sessions/{session_id}")).json()["task_ids"] == []


async def test_state_get_and_merge() -> None:
    async with gateway_client(config(COUNTER)) as client:
        session_id = await create_session(client)
        url = f"{CP}/sessions/{session_id}/state"
        # read and written in one shape: {"state": {...}}
        assert (await client.get(url)).json() == {"state": {}}

        first = await client.post(url, json={"state": {"a": 1, "b": {"x": 1}}})
        assert first.status_code == 200
        assert first.json() == {"state": {"a": 1, "b": {"x": 1}}}
        second = await client.post(url, json={"state": {"b": 2, "c": [1, 2]}})
        assert second.json() == {"state": {"a": 1, "b": 2, "c": [1, 2]}}
        read = (await client.get(url)).json()
        assert read == {"state": {"a": 1, "b": 2, "c": [1, 2]}}
        assert (await client.post(url, json=read)).json() == read  # what was read can be sent
        session = (await client.get(f"{CP}/sessions/{session_id}")).json()
        assert session["state"] == {"a": 1, "b": 2, "c": [1, 2]}

        for bad in ({"state": [1]}, {"state": "x"}, {}, {"state": None}, [1, 2], {"a": 1}):
            response = await client.post(url, json=bad)
            assert response.status_code == 422, (bad, response.text)
            assert response.json()["error"] == "validation_error"
        malformed = await client.post(
            url, content=b"{not json", headers={"content-type": "application/json"}
        )
        assert malformed.status_code in (400, 422)
        assert malformed.json()["error"] in ("bad_request", "validation_error")
        # nothing of the refused bodies was merged
        assert (await client.get(url)).json() == {"state": {"a": 1, "b": 2, "c": [1, 2]}}


async def test_session_tasks_create_and_list_with_status() -> None:
    probe = new_probe("list")
    cfg = config({**COUNTER, "gated": {"source": "gated", "max_concurrent_tasks": 4}})
    async with gateway_client(cfg) as client:
        session_id = await create_session(client)
        url = f"{CP}/sessions/{session_id}/tasks"

        # our form (kwargs object, `service`) and the reference form (JSON string, `agent_id`)
        ours = await client.post(url, json={"input": {"message": "a"}, "service": "counter"})
        assert ours.status_code == 200
        first = ours.json()
        assert isinstance(first, str)
        assert (await wait_result(client, first))["result"] == {
            "turns": 1,
            "said": "a",
        }
        reference = await client.post(
            url, json={"input": json.dumps({"message": "b"}), "agent_id": "counter"}
        )
        second = reference.json()
        assert (await wait_result(client, second))["result"]["turns"] == 2

        held = (
            await client.post(
                url, json={"input": {"key": "list", "label": "h"}, "service": "gated"}
            )
        ).json()
        await wait_status(client, held, "running")

        listing = (await client.get(url)).json()
        assert [t["task_id"] for t in listing] == [first, second, held]
        assert [t["status"] for t in listing] == ["completed", "completed", "running"]
        assert [t["agent_id"] for t in listing] == ["counter", "counter", "gated"]
        assert all(t["session_id"] == session_id for t in listing)
        assert json.loads(listing[0]["input"]) == {"message": "a"}
        assert (await client.get(f"{CP}/sessions/{session_id}")).json()["task_ids"] == [
            first,
            second,
            held,
        ]

        probe.gate("h").set()
        await wait_result(client, held)
        statuses = [t["status"] for t in (await client.get(url)).json()]
        assert statuses == ["completed"] * 3


async def test_tasks_of_one_session_run_in_submission_order() -> None:
    probe = new_probe("order")
    cfg = config({"gated": {"source": "gated", "max_concurrent_tasks": 4}})
    async with gateway_client(cfg) as client:
        session_id = await create_session(client)
        ids = [
            await submit(client, "gated", {"key": "order", "label": n}, session_id)
            for n in ("1", "2", "3")
        ]
        await wait_status(client, ids[0], "running")
        # the later tasks are held back although the service has free capacity
        listing = (await client.get(f"{CP}/sessions/{session_id}/tasks")).json()
        assert [t["status"] for t in listing] == ["running", "pending", "pending"]
        # open the later gates first: were 2 and 3 already running, they would end before 1
        probe.gate("3").set()
        probe.gate("2").set()
        probe.gate("1").set()
        results = [await wait_result(client, task_id) for task_id in ids]
        assert [r["status"] for r in results] == ["completed"] * 3
        assert probe.log == ["start:1", "end:1", "start:2", "end:2", "start:3", "end:3"]
        assert probe.max_active == 1


async def test_one_session_queues_per_service_ordered_within_and_concurrent_across() -> None:
    probe = new_probe("lanes")
    services = {name: {"source": "gated", "max_concurrent_tasks": 4} for name in ("alpha", "beta")}
    async with gateway_client(config(services)) as client:
        session_id = await create_session(client)
        ids = {
            label: await submit(client, service, {"key": "lanes", "label": label}, session_id)
            for service, label in (("alpha", "a1"), ("alpha", "a2"), ("beta", "b1"), ("beta", "b2"))
        }
        # no gate is open yet: the first task of each service runs, at the same time
        await wait_status(client, ids["a1"], "running")
        await wait_status(client, ids["b1"], "running")
        assert probe.max_active == 2
        for label in ("a2", "b2"):
            assert (await client.get(f"{CP}/tasks/{ids[label]}")).json()["status"] == "pending"
        # beta's lane moves on while alpha's first task still runs
        probe.gate("a2").set()
        probe.gate("b2").set()
        probe.gate("b1").set()
        assert (await wait_result(client, ids["b2"]))["status"] == "completed"
        assert (await client.get(f"{CP}/tasks/{ids['a1']}")).json()["status"] == "running"
        assert (await client.get(f"{CP}/tasks/{ids['a2']}")).json()["status"] == "pending"
        probe.gate("a1").set()
        assert (await wait_result(client, ids["a2"]))["status"] == "completed"
    alpha = [e for e in probe.log if e.endswith(("a1", "a2"))]
    beta = [e for e in probe.log if e.endswith(("b1", "b2"))]
    assert alpha == ["start:a1", "end:a1", "start:a2", "end:a2"]
    assert beta == ["start:b1", "end:b1", "start:b2", "end:b2"]


async def test_cancelling_a_queued_session_task_does_not_let_the_next_overtake() -> None:
    probe = new_probe("cancel")
    cfg = config({"gated": {"source": "gated", "max_concurrent_tasks": 4}})
    async with gateway_client(cfg) as client:
        session_id = await create_session(client)
        a, b, c = [
            await submit(client, "gated", {"key": "cancel", "label": n}, session_id)
            for n in ("a", "b", "c")
        ]
        probe.gate("c").set()
        await wait_status(client, a, "running")
        cancelled = await client.post(f"{CP}/tasks/{b}/cancel")
        assert cancelled.status_code == 200
        assert (await wait_result(client, b))["status"] == "cancelled"
        # A task outside the session on the same service runs through meanwhile; by the time it
        # ended, a wrongly released `c` (dispatched before it, gate open) would have started.
        free = await submit(client, "gated", {"key": "cancel", "label": "free", "hold": False})
        assert (await wait_result(client, free))["status"] == "completed"
        assert "start:c" not in probe.log
        assert (await client.get(f"{CP}/tasks/{c}")).json()["status"] == "pending"

        probe.gate("a").set()
        assert (await wait_result(client, a))["status"] == "completed"
        assert (await wait_result(client, c))["status"] == "completed"
        in_session = [e for e in probe.log if not e.endswith(":free")]
        assert in_session == ["start:a", "end:a", "start:c", "end:c"]


async def test_different_sessions_run_concurrently() -> None:
    new_probe("meet")
    cfg = config({"meet": {"source": "rendezvous", "max_concurrent_tasks": 4}})
    async with gateway_client(cfg) as client:
        first, second = await create_session(client), await create_session(client)
        # each run waits (up to 3 s) until both have arrived: run one after the other, the
        # first would time out and fail
        kwargs = {"key": "meet", "parties": 2, "within": 3}
        ids = [
            await submit(client, "meet", {**kwargs, "label": "x"}, first),
            await submit(client, "meet", {**kwargs, "label": "y"}, second),
        ]
        results = [await wait_result(client, task_id) for task_id in ids]
        assert [r["status"] for r in results] == ["completed", "completed"], results
        assert [r["result"] for r in results] == ["met:x", "met:y"]
