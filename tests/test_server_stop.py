"""A stopping gateway ends its event feed streams at once (gateway.web.server_stop): an open
console tab used to hold SIGTERM for `shutdown_grace` + 5 s, then a traceback. A task's stream
still ends with the task's result."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from gateway.web import server_stop
from gateway.web.server_stop import EndableStream, ending_streams_on_stop
from tests.conftest import running_server

pytestmark = pytest.mark.anyio

GRACE = 30.0  # uvicorn would wait GRACE + 5 s for a stream that never ends


class Reader(threading.Thread):
    """Reads an event stream to its end; notes whether it ended cleanly."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.lines: list[str] = []
        self.opened = threading.Event()
        self.ended_cleanly = False
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.stream("GET", self.url, timeout=60) as response:
                assert response.status_code == 200
                self.opened.set()
                for line in response.iter_lines():
                    self.lines.append(line)
            self.ended_cleanly = True
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
            self.opened.set()


def test_sigterm_ends_open_streams_and_the_server_exits_at_once(tmp_path: Path) -> None:
    config = {
        "shutdown_grace": GRACE,
        "services": {"nap": {"type": "workflow", "source": "tests.fixtures_faults:nap"}},
    }
    with running_server(config, tmp_path) as server:
        done = httpx.post(
            f"{server.base_url}/services/nap/run", json={"kwargs": {"seconds": 0.01}}
        ).json()
        readers = [
            Reader(f"{server.base_url}/control_plane/events"),  # the console's feed
            Reader(f"{server.base_url}/control_plane/events?after=0"),
        ]
        for reader in readers:
            reader.start()
            assert reader.opened.wait(10)
        time.sleep(0.3)  # the held events are written
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=GRACE)
        took = time.monotonic() - started
        for reader in readers:
            reader.join(10)
        log = server.log()
    # plain uvicorn re-raises the signal once stopped (python -m gateway exits 0 instead)
    assert code in (0, -signal.SIGTERM) and "Application shutdown complete" in log, log
    assert took < 10, f"took {took:.1f}s to stop"
    assert "timeout graceful shutdown exceeded" not in log
    for reader in readers:
        assert reader.error is None and reader.ended_cleanly
    assert any(done["task_id"] in line for line in readers[1].lines)


def test_a_task_stream_open_at_sigterm_still_gets_its_result(tmp_path: Path) -> None:
    """Found by review: ending every stream cut a running task's reader off before its result,
    which the server went on to produce (and the web console and llama-agents clients took the
    clean end as the end)."""
    config = {
        "shutdown_grace": GRACE,
        "services": {"nap": {"type": "workflow", "source": "tests.fixtures_faults:nap"}},
    }
    with running_server(config, tmp_path) as server:
        task = httpx.post(
            f"{server.base_url}/control_plane/tasks",
            json={"service": "nap", "input": {"seconds": 2.0}},
        ).json()
        follower = Reader(f"{server.base_url}/control_plane/tasks/{task['task_id']}/events")
        feed = Reader(f"{server.base_url}/control_plane/events")
        for reader in (follower, feed):
            reader.start()
            assert reader.opened.wait(10)
        time.sleep(0.3)
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        feed.join(10)
        feed_took = time.monotonic() - started
        code = server.process.wait(timeout=GRACE)
        follower.join(10)
        log = server.log()
    assert code in (0, -signal.SIGTERM) and "timeout graceful shutdown exceeded" not in log, log
    assert feed.error is None and feed.ended_cleanly and feed_took < 1.5
    assert follower.error is None and follower.ended_cleanly
    assert "event: result" in follower.lines and any('"completed"' in x for x in follower.lines)


def _http_scope() -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "headers": []}


async def test_an_ended_stream_closes_its_body_and_finishes_the_response(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    streams = server_stop._OpenStreams()
    monkeypatch.setattr(server_stop, "OPEN_STREAMS", streams)
    closed = anyio.Event()
    sent: list[dict[str, Any]] = []

    async def body():
        try:
            yield "first\n"
            await anyio.sleep_forever()
        finally:
            closed.set()

    async def receive() -> dict[str, Any]:
        await anyio.sleep_forever()
        return {}

    first_chunk = anyio.Event()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if len(sent) == 2:
            first_chunk.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            response = EndableStream(body(), media_type="text/plain")
            tg.start_soon(response, _http_scope(), receive, send)
            await first_chunk.wait()
            assert len(streams.scopes) == 1
            streams.end_all()
        await closed.wait()
    assert [m["type"] for m in sent] == ["http.response.start"] + ["http.response.body"] * 2
    assert sent[1]["body"] == b"first\n" and sent[-1] == {
        "type": "http.response.body",
        "body": b"",
        "more_body": False,
    }
    assert not streams.scopes

    # once the server is stopping, a new stream ends where it first waits, as a whole response
    sent.clear()
    closed = anyio.Event()
    with anyio.fail_after(5):
        await EndableStream(body(), media_type="text/plain")(_http_scope(), receive, send)
        await closed.wait()
    assert sent[0]["type"] == "http.response.start"
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


async def test_outside_uvicorn_the_signal_handlers_are_left_alone() -> None:
    before = {sig: signal.getsignal(sig) for sig in server_stop.STOP_SIGNALS}
    with ending_streams_on_stop():
        assert {sig: signal.getsignal(sig) for sig in server_stop.STOP_SIGNALS} == before
    assert not server_stop.OPEN_STREAMS.stopping


async def test_under_uvicorn_the_handler_is_chained_then_restored_and_a_stale_stop_cleared(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import uvicorn

    class Embedded(uvicorn.Server):  # a subclass, as embedding code often has
        pass

    streams = server_stop._OpenStreams()
    streams.stopping = True  # left by a server force-quit before its shutdown (found by review)
    monkeypatch.setattr(server_stop, "OPEN_STREAMS", streams)
    server = Embedded(uvicorn.Config(app=None))
    original = {sig: signal.getsignal(sig) for sig in server_stop.STOP_SIGNALS}
    try:
        for sig in server_stop.STOP_SIGNALS:
            signal.signal(sig, server.handle_exit)
        with ending_streams_on_stop():
            assert not streams.stopping
            chained = signal.getsignal(signal.SIGTERM)
            assert chained != server.handle_exit
            chained(signal.SIGTERM, None)  # as the signal would
            assert server.should_exit
            await anyio.sleep(0)  # end_all runs in the loop
            await anyio.sleep(0)
            assert streams.stopping
        assert signal.getsignal(signal.SIGTERM) == server.handle_exit
        assert not streams.stopping
    finally:
        for sig, handler in original.items():
            signal.signal(sig, handler)
