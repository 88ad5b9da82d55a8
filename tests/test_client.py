"""The Python client: run/submit/handles, typed events and errors, resuming a dropped stream,
retrying on 503 — in-process and against the real server."""

from __future__ import annotations

import httpx
import pytest

from gateway.app import build_app
from gateway.client import (
    AsyncGatewayClient,
    GatewayClient,
    NotFound,
    Overloaded,
    TaskFailed,
    Unauthorized,
    Unreachable,
)
from gateway.client_wire import GapEvent, ResultEvent, SSEParser, StatusEvent, WorkflowEvent
from gateway.config import parse_config
from tests.conftest import free_port, running_server
from tests.dropping_proxy import dropping_proxy

FIX = "tests.fixtures_workflows"
CONFIG = {
    "default_service": "echo",
    "services": {
        "echo": {"type": "workflow", "source": "examples.echo:workflow"},
        "stats": {"type": "workflow", "source": "examples.pipeline:build"},
        "counter": {"type": "workflow", "source": "examples.counter:workflow"},
        "ticker": {"type": "workflow", "source": "tests.fixtures_cli:ticker"},
        "slow": {"type": "workflow", "source": f"{FIX}:slow", "max_queued_tasks": 1},
        "approval": {
            "type": "workflow",
            "source": "examples.approval:workflow",
            "human_service": "approvers",
        },
        "approvers": {"type": "human"},
    },
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(CONFIG, tmp_path_factory.mktemp("client")) as running:
        yield running


class CountingTransport(httpx.HTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.statuses: list[int] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.statuses.append(response.status_code)
        return response


def test_sse_parser_reads_ids_multiline_data_and_comments() -> None:
    lines = [
        ": keep-alive",
        "id: 7",
        "event: status",
        'data: {"task_id": "t", "kind": "status",',
        'data:  "status": "running"}',
        "",
        "event: event",
        'data: {"task_id": "t", "kind": "event", "name": "Tick", "data": {"i": 1}}',
        "",
    ]
    first, second = SSEParser().feed(lines)
    assert isinstance(first, StatusEvent) and (first.id, first.status) == (7, "running")
    assert isinstance(second, WorkflowEvent) and second.data == {"i": 1}
    assert second.id == 7  # the last id seen stays the stream's id until a new one comes


@pytest.mark.anyio
async def test_async_client_in_process() -> None:
    app = build_app(parse_config(CONFIG, "client-test"))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with AsyncGatewayClient("http://gateway", transport=transport) as client:
            assert await client.run("echo", message="hi") == "hi"
            task = await client.submit("stats", numbers=[2, 4])
            assert (await task.result(timeout=10))["mean"] == 3.0
            events = [e async for e in task.events()]
            assert isinstance(events[-1], ResultEvent)
            assert events[-1].record["status"] == "completed"

            session = await client.sessions.create()
            turns = [(await client.run("counter", session_id=session))["turns"] for _ in range(2)]
            assert turns == [1, 2]

            with pytest.raises(TaskFailed) as failed:
                await client.run("stats", numbers=[])
            assert "non-empty" in failed.value.error
            with pytest.raises(NotFound):
                await client.task("no-such-task")


def test_sync_client_against_the_real_server(server) -> None:
    with GatewayClient(server.base_url) as client:
        assert set(client.services()) == set(CONFIG["services"])
        task = client.submit("echo", message="over http")
        assert task.result(timeout=10) == "over http"
        kinds = [e.kind for e in task.events()]
        assert kinds[0] == "status" and kinds[-1] == "result"
        with pytest.raises(TaskFailed) as failed:
            client.run("stats", numbers=[])
        assert "non-empty" in failed.value.error and failed.value.record["status"] == "failed"
        with pytest.raises(NotFound):
            client.submit("nope", x=1)

        # a person answers through the client; the workflow that asked completes
        approval = client.submit("approval", request="ship it")
        question = next(e for e in approval.events() if e.name == "InputRequiredEvent")
        assert question.kind == "event"
        waiting = client.human.pending()
        assert [q["service"] for q in waiting] == ["approvers"]
        client.human.answer(waiting[0]["task_id"], "yes")
        assert approval.result(timeout=10)["approved"] is True


@pytest.mark.anyio
async def test_async_client_streams_from_the_real_server(server) -> None:
    async with AsyncGatewayClient(server.base_url) as client:
        task = await client.submit("ticker", count=5, delay=0.01)
        ticks = [e.data["i"] async for e in task.events() if e.name == "Tick"]
        assert ticks == [0, 1, 2, 3, 4]
        assert await task.result(timeout=10) == {"ticks": 5}


@pytest.mark.parametrize("drop_after", [3, 12])
def test_a_dropped_stream_resumes_with_nothing_lost_or_repeated(server, drop_after) -> None:
    port = int(server.base_url.rsplit(":", 1)[1])
    with dropping_proxy(port, drop_after) as proxy, GatewayClient(proxy.url) as client:
        task = client.submit("ticker", count=20, delay=0.02)
        events = list(task.events())
        assert proxy.dropped == 1 and proxy.connections >= 2  # then a new connection
    ticks = [e.data["i"] for e in events if e.name == "Tick"]
    assert ticks == list(range(20))
    assert events[-1].kind == "result" and events[-1].record["status"] == "completed"
    ids = [e.id for e in events]  # the SSE ids: every event once, in order, none missing
    assert ids == list(range(1, len(ids) + 1))


def test_503_is_retried_after_retry_after_then_raised_when_it_persists(server) -> None:
    counting = CountingTransport()
    with GatewayClient(server.base_url, transport=counting, max_retry_delay=2) as client:
        first = client.submit("slow", seconds=0.6)  # fills the service's one queue place
        second = client.submit("slow", seconds=0)  # 503 + Retry-After, retried until it fits
        assert 503 in counting.statuses
        assert second.result(timeout=10) == "slept" and first.result(timeout=10) == "slept"

    with GatewayClient(server.base_url, retries=0) as client:
        busy = client.submit("slow", seconds=1)
        with pytest.raises(Overloaded) as refused:
            client.submit("slow", seconds=0)
        assert refused.value.retry_after == 1.0
        busy.cancel()


def test_connection_and_auth_errors_are_typed(tmp_path) -> None:
    with (
        pytest.raises(Unreachable) as refused,
        GatewayClient(f"http://127.0.0.1:{free_port()}") as c,
    ):
        c.services()
    assert "connection refused" in str(refused.value)

    config = {**CONFIG, "auth": {"tokens_env": "CLIENT_TEST_TOKENS"}}
    env = {"CLIENT_TEST_TOKENS": "right"}
    with running_server(config, tmp_path, env=env) as server:
        with pytest.raises(Unauthorized), GatewayClient(server.base_url, token="wrong") as c:
            c.services()
        with GatewayClient(server.base_url, token="right") as client:
            assert client.run("echo", message="ok") == "ok"


def test_result_waits_past_its_timeout_raise_timeout_error(server) -> None:
    with GatewayClient(server.base_url) as client:
        task = client.submit("approval", request="never answered")
        with pytest.raises(TimeoutError):
            task.result(timeout=0.2)
        task.cancel()
        assert task.wait(timeout=5)["status"] == "cancelled"


@pytest.mark.anyio
async def test_the_async_client_resumes_a_dropped_stream_too(server) -> None:
    port = int(server.base_url.rsplit(":", 1)[1])
    with dropping_proxy(port, 5) as proxy:
        async with AsyncGatewayClient(proxy.url) as client:
            task = await client.submit("ticker", count=15, delay=0.02)
            events = [e async for e in task.events()]
        assert proxy.dropped == 1
    assert [e.data["i"] for e in events if e.name == "Tick"] == list(range(15))
    assert events[-1].kind == "result"


@pytest.mark.anyio
async def test_a_late_reader_is_told_of_the_events_no_longer_held() -> None:
    config = {
        "events": {"replay_size": 8},
        "services": {"ticker": {"type": "workflow", "source": "tests.fixtures_cli:ticker"}},
    }
    app = build_app(parse_config(config, "gap-test"))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with AsyncGatewayClient("http://gateway", transport=transport) as client:
            task = await client.submit("ticker", count=30, delay=0)
            await task.wait(timeout=10)
            events = [e async for e in task.events()]
    assert isinstance(events[0], GapEvent) and events[0].data["dropped"] > 0
    assert isinstance(events[-1], ResultEvent)
    ids = [e.id for e in events]
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # after the gap: all, in order
