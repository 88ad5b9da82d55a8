"""The endless event stream (the event feed) ends when the server begins to stop.

uvicorn waits for every response to end before it runs the app's shutdown, and the feed
(`GET /control_plane/events`: the web console, `agent-gateway human inbox`) never ends by
itself; so one open console tab held a stopping gateway for its whole
`timeout_graceful_shutdown` (`shutdown_grace` + 5 s), then a traceback in the log. uvicorn
tells the app nothing before then, so the app adds itself to the signal handler uvicorn installs
for SIGINT and SIGTERM (`ending_streams_on_stop`, for the app's lifespan): on the signal,
uvicorn's handler runs as before and every open feed stream is ended the normal way
(`EndableStream`); its readers resume with `Last-Event-ID` once the gateway is back.

A task's event stream is not ended: it ends with the task's result, and the task goes on
running (drained within `shutdown_grace` once uvicorn starts the app's shutdown), so a reader
cut off before the result would miss it.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _OpenStreams:
    """The endless streams being written in this process (signals are per process)."""

    def __init__(self) -> None:
        self.scopes: set[anyio.CancelScope] = set()
        self.stopping = False

    def end_all(self) -> None:
        self.stopping = True
        for scope in list(self.scopes):
            scope.cancel()


OPEN_STREAMS = _OpenStreams()


class EndableStream(StreamingResponse):
    """A streaming response that a stopping server ends: the body stops where it is (the
    body's generator is closed, its `finally` runs) and the response is finished properly."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = {"started": False, "finished": False}

        async def tracking(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.start":
                state["started"] = True
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                state["finished"] = True

        streams = OPEN_STREAMS
        with anyio.CancelScope() as stop:
            if streams.stopping:
                stop.cancel()
            streams.scopes.add(stop)
            try:
                await super().__call__(scope, receive, tracking)
            finally:
                streams.scopes.discard(stop)
        if not stop.cancelled_caught or state["finished"]:
            return
        if not state["started"]:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _is_uvicorns(handler: Any) -> bool:
    """Is `handler` the signal handler of a uvicorn server (or of a subclass of one)?"""
    import uvicorn

    return isinstance(getattr(handler, "__self__", None), uvicorn.Server)


@contextmanager
def ending_streams_on_stop() -> Iterator[None]:
    """For the app's lifespan under uvicorn: on SIGINT or SIGTERM, after uvicorn's own handler,
    end every open endless stream (and any opened later). Anywhere else (another server, a test
    client, a thread other than the main one) this does nothing."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not on asyncio
        yield
        return
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    if not all(_is_uvicorns(handler) for handler in previous.values()):
        yield
        return

    OPEN_STREAMS.stopping = False  # a server force-quit before its shutdown may have left it

    def handler(sig: int, frame: Any) -> None:
        previous[sig](sig, frame)  # type: ignore[operator]
        loop.call_soon_threadsafe(OPEN_STREAMS.end_all)

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, before in previous.items():
            if signal.getsignal(sig) is handler:
                signal.signal(sig, before)
        OPEN_STREAMS.stopping = False
