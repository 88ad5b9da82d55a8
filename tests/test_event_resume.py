"""Task event streams never lie by omission: every event has an id (its seq), a reader resumes
with `Last-Event-ID` or `after` without loss or repeat, and events no longer held are announced
by a `gap` event first. (`parse_sse`/`SseReader` check that each frame's id is its seq.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from tests.conftest import RunningServer, gateway_client, running_server
from tests.fixtures_sessions import SseReader, config, parse_sse, submit, summary, wait_result

pytestmark = pytest.mark.anyio

CP = "/control_plane"
SERVICES = {"stream": {"source": "stream", "max_concurrent_tasks": 8}}
TICKS = 1000
TOTAL = TICKS + 3  # pending, running, 1000 ticks, result


async def _events(client: httpx.AsyncClient, task_id: str, **kw) -> list[tuple[str, dict]]:
    with anyio.fail_after(20):
        response = await client.get(f"{CP}/tasks/{task_id}/events", **kw)
    assert response.status_code == 200, response.text
    return parse_sse(response.text.splitlines())


def _seqs(events: list[tuple[str, dict]]) -> list[int]:
    return [data["seq"] for _, data in events]


async def test_a_late_subscriber_of_1000_events_gets_a_gap_event_first() -> None:
    async with gateway_client(config(SERVICES)) as client:  # replay_size 256 (the default)
        task_id = await submit(client, "stream", {"before": TICKS})
        await wait_result(client, task_id)
        events = await _events(client, task_id)
    kind, gap = events[0]
    assert kind == "gap"
    first = TOTAL - 256 + 1
    assert gap["data"] == {"after": 0, "first_available": first, "dropped": first - 1}
    assert gap["seq"] == first - 1
    assert _seqs(events[1:]) == list(range(first, TOTAL + 1))
    assert summary(events)[-1] == "result:completed"


async def test_a_late_subscriber_gets_all_1000_events_when_the_replay_holds_them() -> None:
    async with gateway_client(config(SERVICES, events={"replay_size": 2000})) as client:
        task_id = await submit(client, "stream", {"before": TICKS})
        await wait_result(client, task_id)
        events = await _events(client, task_id)
    assert _seqs(events) == list(range(1, TOTAL + 1))
    assert [e for e in summary(events) if e.startswith("event:")] == [
        f"event:Tick:{n}" for n in range(TICKS)
    ]
    assert summary(events)[0] == "status:pending" and summary(events)[-1] == "result:completed"


async def test_resume_with_last_event_id_or_after() -> None:
    async with gateway_client(config(SERVICES)) as client:
        task_id = await submit(client, "stream", {"before": 5})
        await wait_result(client, task_id)
        whole = await _events(client, task_id)
        assert _seqs(whole) == list(range(1, 9))
        for cursor in range(0, 9):
            by_header = await _events(client, task_id, headers={"Last-Event-ID": str(cursor)})
            by_query = await _events(client, task_id, params={"after": cursor})
            assert by_header == by_query == whole[cursor:], cursor
        # both given (an EventSource reconnect keeps its URL): the larger wins
        both = await _events(client, task_id, params={"after": 2}, headers={"Last-Event-ID": "6"})
        assert _seqs(both) == [7, 8]
        # an id from the future means "up to date": nothing is repeated, the stream ends
        assert await _events(client, task_id, headers={"Last-Event-ID": "99"}) == []
        for bad in ("x", "-1", "1.5"):
            response = await client.get(
                f"{CP}/tasks/{task_id}/events", headers={"Last-Event-ID": bad}
            )
            assert response.status_code == 422, bad
            assert response.json()["error"] == "validation_error"
        assert (await client.get(f"{CP}/tasks/{task_id}/events?after=-1")).status_code == 422


# -- through a real uvicorn server --------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp: Path = tmp_path_factory.mktemp("resume-server")
    cfg = config(SERVICES, events={"replay_size": 2000})
    with running_server(cfg, tmp, env={"GATEWAY_SECRET": "resume"}) as running:
        yield running


async def test_live_reconnect_mid_stream_yields_no_loss_and_no_repeat(server) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=20) as http:
        task_id = await submit(http, "stream", {"before": 300, "wait": True})
        url = f"{CP}/tasks/{task_id}/events"
        seen: list[tuple[str, dict]] = []
        with anyio.fail_after(30):
            # read part of the stream, drop the connection, reconnect from the last id: the run
            # goes on while the reader is away (it is sent 500 more ticks in between)
            async with http.stream("GET", url) as response:
                reader = SseReader(response)
                for _ in range(120):
                    assert await reader.next() is not None
                seen += reader.events
            last = seen[-1][1]["seq"]
            async with http.stream("GET", url, headers={"Last-Event-ID": str(last)}) as response:
                reader = SseReader(response)
                await reader.until(lambda e: e[1].get("name") == "Paused")
                seen += reader.events
            go = {"event": "Go", "data": {"extra_ticks": 500}}
            assert (await http.post(f"{CP}/tasks/{task_id}/events", json=go)).status_code == 202
            await wait_result(http, task_id)
            last = seen[-1][1]["seq"]
            async with http.stream("GET", url, headers={"Last-Event-ID": str(last)}) as response:
                seen += await SseReader(response).rest()
            whole = parse_sse((await http.get(url)).text.splitlines())
    assert _seqs(seen) == list(range(1, len(seen) + 1))  # no loss, no repeat
    assert seen == whole
    assert summary(seen)[-1] == "result:completed"
    assert sum(1 for e in summary(seen) if e.startswith("event:Tick")) == 800


async def test_live_run_stream_true_resumes_by_reposting_its_task_id(server) -> None:
    body = {"kwargs": {"before": 3, "wait": True}, "task_id": "resume-run-1"}
    url = "/services/stream/run?stream=true"
    async with httpx.AsyncClient(base_url=server.base_url, timeout=20) as http:
        with anyio.fail_after(20):
            async with http.stream("POST", url, json=body) as response:
                assert response.status_code == 200
                reader = SseReader(response)
                await reader.until(lambda e: e[1].get("name") == "Paused")
            first = reader.events
            go = {"event": "Go", "data": {"extra_ticks": 2}}
            sent = await http.post(f"{CP}/tasks/resume-run-1/events", json=go)
            assert sent.status_code == 202
            headers = {"Last-Event-ID": str(first[-1][1]["seq"])}
            async with http.stream("POST", url, json=body, headers=headers) as response:
                assert response.status_code == 200
                rest = await SseReader(response).rest()
            # without a resume point the same id is a second submission: refused
            again = await http.post(url, json=body)
            assert again.status_code == 409
    assert _seqs(first + rest) == list(range(1, len(first) + len(rest) + 1))
    assert summary(rest) == ["event:Tick:3", "event:Tick:4", "result:completed"]


async def test_a_result_event_is_stamped_with_the_task_end_however_late_it_is_read(
    tmp_path: Path,
) -> None:
    # The result event held in memory is written when read, stamped with the task's end; the
    # one rebuilt for a task from before a restart was stamped with the time it was read.
    setup = {
        "store": {"kind": "sqlite", "path": str(tmp_path / "g.db")},
        "services": {"echo": {"type": "workflow", "source": "examples.echo:workflow"}},
    }

    async def result_event(client: httpx.AsyncClient, task_id: str) -> dict:
        response = await client.get(f"{CP}/tasks/{task_id}/events")
        return [data for kind, data in parse_sse(response.text.splitlines()) if kind == "result"][0]

    async with gateway_client(setup) as client:
        task = (await client.post("/services/echo/run", json={"kwargs": {"message": "x"}})).json()
        held = await result_event(client, task["task_id"])
    await anyio.sleep(0.05)
    async with gateway_client(setup) as client:
        rebuilt = await result_event(client, task["task_id"])
    assert held["at"] == task["finished_at"]
    assert rebuilt == held
