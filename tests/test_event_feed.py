"""The aggregate stream `GET /control_plane/events`: every task's status changes and every human
queue change, numbered, bounded, resumable with `Last-Event-ID`, announcing what it no longer
holds with a gap event. It never ends, so it is read through a real server (and the hub)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from gateway.control_plane.events import FeedStatus, TaskEventHub
from gateway.messages import TaskEvent, TaskStatus
from tests.conftest import RunningServer, running_server
from tests.fixtures_sessions import SseReader, submit, wait_result

pytestmark = pytest.mark.anyio

CP = "/control_plane"
FEED_SIZE = 64


# -- the hub ----------------------------------------------------------------------------------
async def test_the_feed_resumes_filters_and_announces_gaps() -> None:
    hub = TaskEventHub(feed_size=4)
    for n in range(10):
        service = "a" if n % 2 else "b"
        hub.publish_feed(TaskEvent(task_id=f"t{n}", kind="status", data={"service": service}))
    got: list[TaskEvent] = []
    subscription = hub.subscribe_feed(after=3)
    with anyio.fail_after(5):
        async for event in subscription:
            got.append(event)
            if event.seq == 10:
                break
    subscription.close()
    assert got[0].kind == "gap" and got[0].data == {"after": 3, "first_available": 7, "dropped": 3}
    assert [e.seq for e in got] == [6, 7, 8, 9, 10]

    def only_a(raw: str) -> bool:
        return json.loads(raw)["data"]["service"] == "a"

    live = hub.subscribe_feed(after=10, keep=only_a)
    got = []

    async def read() -> None:
        async for event in live:
            got.append(event)
            if len(got) == 2:
                return

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            await anyio.sleep(0)
            for n in range(10, 14):
                service = "a" if n % 2 else "b"
                hub.publish_feed(TaskEvent(task_id=f"t{n}", data={"service": service}))
    live.close()
    assert [(e.task_id, e.seq) for e in got] == [("t11", 12), ("t13", 14)]
    assert hub.subscriber_count == 0


# -- through a real uvicorn server ------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp: Path = tmp_path_factory.mktemp("feed-server")
    cfg = {
        "name": "feed-test",
        "shutdown_grace": 1,
        "events": {"feed_size": FEED_SIZE},
        "services": {
            "stream": {"type": "workflow", "source": "tests.fixtures_sessions:stream"},
            "desk": {"type": "human"},
            "quick": {"type": "human", "timeout": 0.3},
        },
    }
    with running_server(cfg, tmp, env={"GATEWAY_SECRET": "feed"}) as running:
        yield running


def _of(task_id: str):
    return lambda e: e[1]["task_id"] == task_id


async def _until_n(reader: SseReader, task_id: str, n: int) -> list[dict]:
    """Read until `n` entries about `task_id` were seen; those entries."""
    mine: list[dict] = []
    while len(mine) < n:
        item = await reader.next()
        assert item is not None, "the aggregate stream ended"
        if item[1]["task_id"] == task_id:
            mine.append(item[1])
    return mine


async def test_live_feed_carries_every_status_change_of_a_task(server) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=20) as http:
        with anyio.fail_after(20):
            async with http.stream("GET", f"{CP}/events") as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                reader = SseReader(response)
                task_id = await submit(http, "stream", {"before": 2})
                mine = await _until_n(reader, task_id, 3)
    assert [(e["kind"], e["status"]) for e in mine] == [
        ("status", "pending"),
        ("status", "running"),
        ("status", "completed"),
    ]
    assert all(e["data"]["service"] == "stream" for e in mine)
    # each entry points at the task stream's own numbering: pending=1, running=2, result=5
    assert [e["data"]["task_seq"] for e in mine] == [1, 2, 5]
    seqs = [data["seq"] for _, data in reader.events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


async def test_live_feed_carries_human_queue_changes(server) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=20) as http:
        with anyio.fail_after(20):
            async with http.stream("GET", f"{CP}/events", params={"service": "desk"}) as resp:
                reader = SseReader(resp)
                created = await http.post("/services/desk/tasks", json={"input": "ok?"})
                assert created.status_code == 201, created.text
                answered_id = created.json()["task_id"]
                answer = {"result": "yes"}
                handled = await http.post(f"/services/desk/tasks/{answered_id}/handle", json=answer)
                assert handled.status_code == 200
                answered = await _until_n(reader, answered_id, 4)

                withdrawn_id = await submit(http, "desk", {})
                await _until_n(reader, withdrawn_id, 3)  # pending, created, waiting_for_human
                cancelled = await http.post(f"{CP}/tasks/{withdrawn_id}/cancel")
                assert cancelled.status_code == 200
                withdrawn = await _until_n(reader, withdrawn_id, 2)
        assert all(e[1]["data"]["service"] == "desk" for e in reader.events)

        async with http.stream("GET", f"{CP}/events", params={"service": "quick"}) as resp:
            reader = SseReader(resp)
            with anyio.fail_after(20):
                timed_id = await submit(http, "quick", {})
                timed = await _until_n(reader, timed_id, 5)

    def names(entries: list[dict]) -> list[str]:
        return [e["name"] if e["kind"] == "human" else f"status:{e['status']}" for e in entries]

    assert names(answered) == [
        "status:pending",
        "created",
        "status:waiting_for_human",
        "answered",
    ]
    # the control plane ends the task first, then tells the desk, which withdraws it
    assert names(withdrawn) == ["status:cancelled", "withdrawn"]
    assert names(timed) == [
        "status:pending",
        "created",
        "status:waiting_for_human",
        "timed_out",
        "status:timed_out",
    ]


async def test_live_feed_reconnect_no_loss_no_repeat_and_a_gap_past_the_bound(server) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=20) as http:
        with anyio.fail_after(30):
            async with http.stream("GET", f"{CP}/events") as response:
                reader = SseReader(response)
                first_id = await submit(http, "stream", {"before": 0})
                await _until_n(reader, first_id, 3)
            last = reader.events[-1][1]["seq"]
            # while nobody listens, more tasks run
            later = [await submit(http, "stream", {"before": 0}) for _ in range(3)]
            for task_id in later:
                await wait_result(http, task_id)
            headers = {"Last-Event-ID": str(last)}
            async with http.stream("GET", f"{CP}/events", headers=headers) as response:
                resumed = SseReader(response)
                await _until_n(resumed, later[-1], 3)
            seqs = [e[1]["seq"] for e in resumed.events]
            assert seqs[0] == last + 1 and seqs == list(range(last + 1, last + 1 + len(seqs)))
            assert {e[1]["task_id"] for e in resumed.events} >= set(later)
            assert not {e[1]["task_id"] for e in resumed.events} & {first_id}

            # a reader far behind the bound is told so, then gets what is held
            filler = [await submit(http, "stream", {"before": 0}) for _ in range(FEED_SIZE // 3)]
            for task_id in filler:
                await wait_result(http, task_id)
            async with http.stream("GET", f"{CP}/events", params={"after": last}) as response:
                behind = SseReader(response)
                kind, gap = await behind.next()
                await _until_n(behind, filler[-1], 1)
    assert kind == "gap"
    assert gap["data"]["after"] == last and gap["data"]["dropped"] > 0
    assert behind.events[1][1]["seq"] == gap["data"]["first_available"]


async def test_an_event_kept_unwritten_is_written_once_however_many_read_it() -> None:
    # Status changes and results are kept unwritten until read; each reader (every open web
    # console follows the feed) wrote them again, where they used to be written once.
    written: list[int] = []

    class Counted(FeedStatus):
        __slots__ = ()

        def json(self, seq: int) -> str:
            written.append(seq)
            return super().json(seq)

    hub = TaskEventHub(feed_size=16)
    for n in range(3):
        hub.publish_feed(Counted(f"t{n}", TaskStatus.RUNNING, "echo", None, 2))
    hub.publish(TaskEvent(task_id="t0", kind="status", status=TaskStatus.RUNNING))
    readers = [hub.subscribe_feed() for _ in range(4)]
    seen = []
    with anyio.fail_after(5):
        for reader in readers:
            frames = reader.frames()
            seen.append([await anext(frames) for _ in range(3)])
            await frames.aclose()
    assert all(frames == seen[0] for frames in seen)
    assert json.loads(seen[0][2][2])["data"] == {
        "service": "echo",
        "session_id": None,
        "task_seq": 2,
    }
    assert sorted(written) == [1, 2, 3]
    channel = hub.subscribe("t0")
    first, again = channel._channel.after(0), channel._channel.after(0)
    channel.close()
    assert first == again and first[0][2] is again[0][2]  # the task's status: written once
