"""Live task events: SSE on `GET /control_plane/tasks/{id}/events`, events sent into runs with
`POST /control_plane/tasks/{id}/events`, and `POST /services/<wf>/run?stream=true`.

In-process tests use httpx's ASGI transport (which hands over a response once it is complete,
so they read whole streams); the live behaviour (order while running, several subscribers, late
subscribers, disconnects) is tested through a real uvicorn server with httpx streaming.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from gateway.control_plane.events import TaskEventHub
from gateway.messages import TaskEvent, TaskStatus
from tests.conftest import RunningServer, gateway_client, running_server
from tests.fixtures_sessions import (
    SseReader,
    config,
    parse_sse,
    submit,
    summary,
    wait_result,
    wait_status,
)

pytestmark = pytest.mark.anyio

CP = "/control_plane"
SERVICES = {
    "stream": {"source": "stream", "max_concurrent_tasks": 8},
    "waiter": {"source": "waiter"},
    "echo": {"source": "examples.echo:workflow"},
}


def _ticks(start: int, stop: int) -> list[str]:
    return [f"event:Tick:{n}" for n in range(start, stop)]


async def _events_of(client: httpx.AsyncClient, task_id: str) -> list[tuple[str, dict]]:
    with anyio.fail_after(10):
        response = await client.get(f"{CP}/tasks/{task_id}/events")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    return parse_sse(response.text.splitlines())


async def _paused(cp, task_id: str) -> None:
    """In-process: wait until the run says (in its stream) that it waits for an event."""
    subscription = cp.subscribe(task_id)
    try:
        with anyio.fail_after(10):
            async for event in subscription:
                if event.name == "Paused":
                    return
        raise AssertionError("the run ended without pausing")
    finally:
        subscription.close()


# -- in process ---------------------------------------------------------------------------------
async def test_stream_in_order_then_result_then_closed() -> None:
    async with gateway_client(config(SERVICES)) as client:
        task_id = await submit(client, "stream", {"before": 5})
        events = await _events_of(client, task_id)
        assert summary(events) == [
            "status:pending",
            "status:running",
            *_ticks(0, 5),
            "result:completed",
        ]
        assert all(data["task_id"] == task_id for _, data in events)
        times = [data["at"] for _, data in events]
        assert times == sorted(times)
        final = events[-1][1]["data"]
        assert final["result"] == {"ticks": 5, "note": "auto"}
        # a late subscriber (after the end) gets the same replay, and its stream ends too
        assert summary(await _events_of(client, task_id)) == summary(events)


async def test_two_subscribers_each_get_every_event_in_order() -> None:
    apps: list = []
    async with gateway_client(config(SERVICES), app_out=apps) as client:
        cp = apps[0].state.runtime.control_plane
        task_id = await submit(client, "stream", {"before": 2, "wait": True})
        await _paused(cp, task_id)
        got: list[list[tuple[str, dict]]] = []

        async def subscriber() -> None:
            got.append(await _events_of(client, task_id))

        async with anyio.create_task_group() as tg:
            tg.start_soon(subscriber)
            tg.start_soon(subscriber)
            with anyio.fail_after(5):
                while cp.events.subscriber_count < 2:
                    await anyio.sleep(0.01)
            sent = await client.post(
                f"{CP}/tasks/{task_id}/events", json={"event": "Go", "data": {"extra_ticks": 3}}
            )
            assert sent.status_code == 202
        expected = [
            "status:pending",
            "status:running",
            *_ticks(0, 2),
            "event:Paused",
            *_ticks(2, 5),
            "result:completed",
        ]
        assert [summary(g) for g in got] == [expected, expected]
        assert cp.events.subscriber_count == 0


async def test_replay_buffer_is_bounded_by_config_and_the_cut_is_announced() -> None:
    cfg = config(SERVICES, events={"replay_size": 4})
    async with gateway_client(cfg) as client:
        task_id = await submit(client, "stream", {"before": 10})
        await wait_result(client, task_id)
        events = await _events_of(client, task_id)
        assert summary(events) == ["gap:gap", *_ticks(7, 10), "result:completed"]
        # pending=1, running=2, ticks 3..12, result=13: 10..13 are held, 1..9 are gone
        assert events[0][1]["data"] == {"after": 0, "first_available": 10, "dropped": 9}
        assert [data["seq"] for _, data in events] == [9, 10, 11, 12, 13]


async def test_a_late_subscriber_of_a_task_whose_events_are_gone_still_gets_its_end() -> None:
    apps: list = []
    async with gateway_client(config(SERVICES), app_out=apps) as client:
        cp = apps[0].state.runtime.control_plane
        cp.events.retain_closed = 1
        first = await submit(client, "stream", {"before": 1})
        await wait_result(client, first)
        second = await submit(client, "stream", {"before": 1})
        await wait_result(client, second)
        assert first not in cp.events  # its replay was dropped
        events = await _events_of(client, first)
        # pending, running, one tick, result=4: the result keeps its seq, the rest is a gap
        assert summary(events) == ["gap:gap", "result:completed"]
        assert events[0][1]["data"] == {"after": 0, "first_available": 4, "dropped": 3}
        assert events[1][1]["seq"] == 4
        assert events[1][1]["data"]["result"]["ticks"] == 1
        # a reader that had everything but the result gets just the result, no gap
        response = await client.get(f"{CP}/tasks/{first}/events", headers={"Last-Event-ID": "3"})
        assert summary(parse_sse(response.text.splitlines())) == ["result:completed"]


async def test_send_event_into_a_step_that_accepts_it() -> None:
    apps: list = []
    async with gateway_client(config(SERVICES), app_out=apps) as client:
        cp = apps[0].state.runtime.control_plane
        task_id = await submit(client, "stream", {"before": 1, "wait": True})
        await _paused(cp, task_id)
        url = f"{CP}/tasks/{task_id}/events"

        unknown = await client.post(url, json={"event": "Nope", "data": {}})
        assert unknown.status_code == 422
        assert "Nope" in unknown.json()["detail"] and "Go" in unknown.json()["detail"]
        start = await client.post(url, json={"event": "StartEvent", "data": {}})
        assert start.status_code == 422
        bad_field = await client.post(url, json={"event": "Go", "data": {"extra_ticks": "x"}})
        assert bad_field.status_code == 422
        for body in ({}, {"event": ""}, {"event": "Go", "data": [1]}):
            assert (await client.post(url, json=body)).status_code == 422, body
        missing = await client.post(f"{CP}/tasks/nope/events", json={"event": "Go"})
        assert missing.status_code == 404
        # none of the refused events reached the run
        assert (await client.get(f"{CP}/tasks/{task_id}")).json()["status"] == "running"

        sent = await client.post(
            url, json={"event": "Go", "data": {"note": "hi", "extra_ticks": 2}}
        )
        assert sent.status_code == 202
        assert sent.json() == {"sent": "Go"}
        result = await wait_result(client, task_id)
        assert result["status"] == "completed"
        assert result["result"] == {"ticks": 3, "note": "hi"}

        ended = await client.post(url, json={"event": "Go", "data": {}})
        assert ended.status_code == 409
        assert ended.json()["error"] == "conflict"


async def test_send_event_to_a_workflow_waiting_with_wait_for_event() -> None:
    apps: list = []
    async with gateway_client(config(SERVICES), app_out=apps) as client:
        cp = apps[0].state.runtime.control_plane
        task_id = await submit(client, "waiter", {})
        await _paused(cp, task_id)
        url = f"{CP}/tasks/{task_id}/events"
        assert (await client.post(url, json={"event": "Nope"})).status_code == 422
        sent = await client.post(url, json={"event": "Go", "data": {"note": "yes"}})
        assert sent.status_code == 202, sent.text
        result = await wait_result(client, task_id)
        assert result["status"] == "completed"
        assert result["result"] == "answered:yes"


async def test_an_event_for_a_task_that_has_not_started_is_refused_not_lost() -> None:
    apps: list = []
    cfg = config({"one": {"source": "stream", "max_concurrent_tasks": 1}})
    async with gateway_client(cfg, app_out=apps) as client:
        cp = apps[0].state.runtime.control_plane
        first = await submit(client, "one", {"before": 0, "wait": True})
        await _paused(cp, first)
        second = await submit(client, "one", {"before": 0, "wait": True})
        assert (await client.get(f"{CP}/tasks/{second}")).json()["status"] == "pending"
        # the second run does not exist yet: a 202 here would be an event silently dropped
        early = await client.post(f"{CP}/tasks/{second}/events", json={"event": "Go"})
        assert early.status_code == 409, early.text
        assert "not started" in early.json()["detail"]

        go = {"event": "Go", "data": {"note": "1"}}
        assert (await client.post(f"{CP}/tasks/{first}/events", json=go)).status_code == 202
        assert (await wait_result(client, first))["status"] == "completed"
        await _paused(cp, second)
        go = {"event": "Go", "data": {"note": "2"}}
        assert (await client.post(f"{CP}/tasks/{second}/events", json=go)).status_code == 202
        result = await wait_result(client, second)
        assert result["result"] == {"ticks": 0, "note": "2"}


async def test_run_with_stream_true_answers_with_the_events() -> None:
    async with gateway_client(config(SERVICES)) as client:
        with anyio.fail_after(10):
            response = await client.post("/services/stream/run?stream=true", json={"kwargs": {}})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = parse_sse(response.text.splitlines())
        assert summary(events) == ["status:pending", "status:running", *_ticks(0, 3)] + [
            "result:completed"
        ]
        task_id = events[0][1]["task_id"]
        record = (await client.get(f"{CP}/tasks/{task_id}")).json()
        assert record["status"] == "completed"
        assert events[-1][1]["data"]["result"]["ticks"] == 3


# -- the hub: slow subscribers ------------------------------------------------------------------
async def test_a_slow_subscriber_gets_a_gap_event_and_nobody_else_waits() -> None:
    hub = TaskEventHub(replay_size=4)
    slow = hub.subscribe("t")
    fast = hub.subscribe("t")
    received: list[TaskEvent] = []
    got_one = anyio.Event()

    async def read_fast() -> None:
        nonlocal got_one
        async for event in fast:
            received.append(event)
            got_one.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(read_fast)
            for n in range(10):
                hub.publish(TaskEvent(task_id="t", name="Tick", data={"n": n}))  # never waits
                await got_one.wait()
                got_one = anyio.Event()
            hub.publish(TaskEvent(task_id="t", kind="result", status=TaskStatus.COMPLETED))
            hub.close("t")

    assert [e.data.get("n") for e in received[:-1]] == list(range(10))
    assert [e.seq for e in received] == list(range(1, 12))
    assert received[-1].kind == "result"
    # the slow reader is told what it missed, then gets what is still held, result last
    with anyio.fail_after(5):
        late = [event async for event in slow]
    assert late[0].kind == "gap"
    assert late[0].data == {"after": 0, "first_available": 8, "dropped": 7}
    assert [e.seq for e in late] == [7, 8, 9, 10, 11]
    assert late[-1].kind == "result"
    assert hub.subscriber_count == 0


async def test_resuming_from_any_id_yields_no_loss_and_no_repeat() -> None:
    hub = TaskEventHub(replay_size=100)
    for n in range(20):
        hub.publish(TaskEvent(task_id="t", name="Tick", data={"n": n}))
    hub.publish(TaskEvent(task_id="t", kind="result", status=TaskStatus.COMPLETED))
    hub.close("t")
    for cursor in range(0, 22):
        seqs = [e.seq async for e in hub.subscribe("t", after=cursor)]
        assert seqs == list(range(cursor + 1, 22)), cursor
    # an id never issued counts as up to date: nothing repeats, the stream ends
    assert [e async for e in hub.subscribe("t", after=99)] == []


async def test_a_subscriber_that_never_reads_cannot_stall_a_task_of_the_app() -> None:
    apps: list = []
    cfg = config(SERVICES, events={"replay_size": 8})
    async with gateway_client(cfg, app_out=apps) as client:
        cp = apps[0].state.runtime.control_plane
        task_id = await submit(client, "stream", {"before": 1, "wait": True})
        await _paused(cp, task_id)
        stuck = cp.subscribe(task_id)  # subscribed, does not read while the task runs
        await client.post(
            f"{CP}/tasks/{task_id}/events", json={"event": "Go", "data": {"extra_ticks": 20}}
        )
        result = await wait_result(client, task_id)
        assert result["result"]["ticks"] == 21
        with anyio.fail_after(5):
            seen = [e async for e in stuck]
        # it reads now: a gap first (the early part is gone), then the last 8, result last
        assert seen[0].kind == "gap"
        assert [e.seq for e in seen[1:]] == list(range(seen[0].seq + 1, seen[0].seq + 9))
        assert summary([(e.kind, e.model_dump(mode="json")) for e in seen[-2:]]) == [
            "event:Tick:20",
            "result:completed",
        ]


# -- through a real uvicorn server --------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp: Path = tmp_path_factory.mktemp("events-server")
    with running_server(config(SERVICES), tmp, env={"GATEWAY_SECRET": "events"}) as running:
        yield running


async def _post_go(http: httpx.AsyncClient, task_id: str, extra: int = 0) -> None:
    response = await http.post(
        f"{CP}/tasks/{task_id}/events", json={"event": "Go", "data": {"extra_ticks": extra}}
    )
    assert response.status_code == 202, response.text


async def _subscribers_become(http: httpx.AsyncClient, count: int) -> None:
    """Bounded polling of the server's open-subscriber gauge."""
    deadline = time.monotonic() + 10
    while True:
        text = (await http.get("/metrics")).text
        line = next(x for x in text.splitlines() if x.startswith("gateway_sse_subscribers "))
        if float(line.split()[1]) == count:
            return
        assert time.monotonic() < deadline, line
        await anyio.sleep(0.02)


async def test_live_sse_order_subscribers_late_replay_and_disconnect(server) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        task_id = await submit(http, "stream", {"before": 3, "wait": True})
        url = f"{CP}/tasks/{task_id}/events"
        with anyio.fail_after(20):
            async with (
                http.stream("GET", url) as first_response,
                http.stream("GET", url) as leaver_response,
            ):
                assert first_response.headers["content-type"].startswith("text/event-stream")
                first, leaver = SseReader(first_response), SseReader(leaver_response)
                await first.until(lambda e: e[1].get("name") == "Paused")
                await leaver.until(lambda e: e[1].get("name") == "Paused")
                paused = summary(first.events)
                assert paused == ["status:pending", "status:running", *_ticks(0, 3)] + [
                    "event:Paused"
                ]
                assert summary(leaver.events) == paused
                # the task is live: nothing more has been sent, and it has not ended
                assert (await http.get(f"{CP}/tasks/{task_id}")).json()["status"] == "running"

                # the second subscriber disconnects mid-stream
                await leaver_response.aclose()

                # a late subscriber first gets what it missed
                async with http.stream("GET", url) as late_response:
                    late = SseReader(late_response)
                    await late.until(lambda e: e[1].get("name") == "Paused")
                    assert summary(late.events) == paused

                    await _post_go(http, task_id, extra=2)
                    rest = summary(await first.rest())
                    late_rest = summary(await late.rest())
                expected = [*paused, *_ticks(3, 5), "result:completed"]
                assert rest == expected  # the result came last, then the stream closed
                assert late_rest == expected
        result = await wait_result(http, task_id)
        assert result["status"] == "completed"
        assert result["result"] == {"ticks": 5, "note": ""}

        # after the end: a new subscriber gets the whole replay and the stream closes
        with anyio.fail_after(10):
            response = await http.get(url)
        assert summary(parse_sse(response.text.splitlines())) == expected


async def test_live_disconnect_of_the_only_subscriber_leaves_the_task_running(server) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        task_id = await submit(http, "stream", {"before": 1, "wait": True})
        with anyio.fail_after(10):
            async with http.stream("GET", f"{CP}/tasks/{task_id}/events") as response:
                await SseReader(response).until(lambda e: e[1].get("name") == "Paused")
        # the server let go of the subscriber ...
        await _subscribers_become(http, 0)
        # ... and, nobody listening any more, the run goes on and can be driven to its end
        await wait_status(http, task_id, "running")
        await _post_go(http, task_id, extra=1)
        result = await wait_result(http, task_id)
        assert result["status"] == "completed"
        assert result["result"]["ticks"] == 2


async def test_live_run_stream_true_streams_while_running(server) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        body = {"kwargs": {"before": 2, "wait": True}}
        with anyio.fail_after(15):
            async with http.stream("POST", "/services/stream/run?stream=true", json=body) as resp:
                assert resp.status_code == 200
                reader = SseReader(resp)
                kind, first = await reader.next()
                assert (kind, first["status"]) == ("status", "pending")
                task_id = first["task_id"]
                await reader.until(lambda e: e[1].get("name") == "Paused")
                # the answer is still open while the run waits: drive it with the task id
                await _post_go(http, task_id, extra=1)
                events = summary(await reader.rest())
        assert events == [
            "status:pending",
            "status:running",
            *_ticks(0, 2),
            "event:Paused",
            *_ticks(2, 3),
            "result:completed",
        ]
        result = reader.events[-1][1]
        assert result["data"]["result"]["ticks"] == 3
