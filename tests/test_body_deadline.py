"""The 408 body deadline kept by one timer (gateway.web.deadlines), through the Gate."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

from gateway.web.deadlines import BodyDeadlines
from gateway.web.errors import ApiError
from gateway.web.middleware import Gate
from tests.conftest import gateway_client

pytestmark = pytest.mark.anyio


def http_scope(path: str = "/x", length: int | None = None) -> dict[str, Any]:
    headers = [(b"content-type", b"application/json")]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return {"type": "http", "method": "POST", "path": path, "headers": headers}


def trickle(*chunks: bytes, then_block: bool = True):
    """A `receive` giving `chunks` (the last one final unless `then_block`), then blocking."""
    pending = list(chunks)

    async def receive() -> dict[str, Any]:
        if pending:
            body = pending.pop(0)
            more = bool(pending) or then_block
            return {"type": "http.request", "body": body, "more_body": more}
        await anyio.sleep_forever()
        raise AssertionError

    return receive


async def read_all(receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return body


def gate_over(app, timeout: float = 0.2) -> Gate:
    return Gate(app, max_bytes=1000, body_timeout=timeout, identify=lambda h: "", internal=())


async def test_a_trickled_body_is_cut_off_and_the_timer_state_drains() -> None:
    seen: list[Any] = []

    async def app(scope, receive, send) -> None:
        try:
            seen.append(await read_all(receive))
        except ApiError as exc:
            seen.append((exc.status, exc.detail))

    gate = gate_over(app)
    with anyio.fail_after(5):
        await gate(http_scope(), trickle(b'{"in'), lambda m: None)
    assert seen == [(408, "the request body did not arrive within 0.2s")]
    assert gate.deadlines is not None and len(gate.deadlines) == 0


async def test_bodies_in_time_are_untouched_and_leave_nothing_queued() -> None:
    bodies: list[bytes] = []

    async def app(scope, receive, send) -> None:
        bodies.append(await read_all(receive))

    gate = gate_over(app, timeout=0.3)
    for _ in range(50):
        await gate(http_scope(), trickle(b'{"a": ', b"1}", then_block=False), lambda m: None)
    assert bodies == [b'{"a": 1}'] * 50
    assert gate.deadlines is not None and len(gate.deadlines) == 0
    await anyio.sleep(0.4)  # the timer armed by the first read fires on an empty queue
    await gate(http_scope(), trickle(b"{}", then_block=False), lambda m: None)
    assert bodies[-1] == b"{}"


async def test_a_slow_reader_finds_its_deadline_passed_on_its_next_read() -> None:
    outcome: list[Any] = []

    async def app(scope, receive, send) -> None:
        await receive()  # the first chunk, then the app dawdles past the deadline
        await anyio.sleep(0.3)
        try:
            await receive()
        except ApiError as exc:
            outcome.append(exc.status)

    await gate_over(app)(http_scope(), trickle(b"{", b"}"), lambda m: None)
    assert outcome == [408]


async def test_another_cancellation_while_waiting_stays_a_cancellation() -> None:
    reached: list[str] = []

    async def app(scope, receive, send) -> None:
        try:
            await read_all(receive)
        except ApiError:  # pragma: no cover - the failure this test looks for
            reached.append("408")
            raise

    gate = gate_over(app, timeout=0.1)
    with anyio.move_on_after(0.1) as scope:  # expires with the body deadline
        await gate(http_scope(), trickle(b"{"), lambda m: None)
    assert scope.cancelled_caught and reached == []
    with anyio.move_on_after(0.02) as scope:  # expires first
        await gate(http_scope(), trickle(b"{"), lambda m: None)
    assert scope.cancelled_caught and reached == []
    await anyio.sleep(0.15)  # the deadline of the abandoned read passes harmlessly
    assert gate.deadlines is not None and len(gate.deadlines) == 0


async def test_deadlines_follow_their_reads_not_one_timer_per_read() -> None:
    deadlines = BodyDeadlines(0.05)
    reads = [deadlines.start() for _ in range(3)]
    reads[1].finish()  # done out of order: stays queued behind the first
    assert len(deadlines) == 3
    reads[0].finish()
    assert len(deadlines) == 1
    await anyio.sleep(0.1)
    assert reads[2].late and not reads[1].late and len(deadlines) == 0


async def test_the_gateway_answers_a_trickled_body_with_the_408_shape() -> None:
    cfg = {
        "body_timeout": 0.2,
        "services": {"echo": {"type": "workflow", "source": "examples.echo:workflow"}},
    }
    app_out: list = []
    async with gateway_client(cfg, app_out=app_out):
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {**http_scope("/services/echo/run", 100), "query_string": b"", "state": {}}
        with anyio.fail_after(5):
            await app_out[0](scope, trickle(b'{"kwargs"'), send)
    assert sent[0]["status"] == 408
    assert json.loads(sent[1]["body"])["error"] == "request_timeout"


async def test_a_read_cut_short_by_the_apps_own_scope_keeps_its_deadline() -> None:
    # e.g. Starlette's `request.is_disconnected()` (a receive in a cancelled scope) before
    # reading the body: the body read after it must still be cut off at the deadline.
    outcome: list[Any] = []

    async def app(scope, receive, send) -> None:
        with anyio.move_on_after(0.01):
            await receive()
        try:
            await read_all(receive)
        except ApiError as exc:
            outcome.append(exc.status)

    gate = gate_over(app)
    with anyio.fail_after(2):
        await gate(http_scope(), trickle(), lambda m: None)
    assert outcome == [408]
    assert gate.deadlines is not None and len(gate.deadlines) == 0
