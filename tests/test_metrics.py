"""Observability: `/metrics` in Prometheus format and structured logs carrying task_id/service."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.observe.logs import JsonFormatter, TextFormatter
from tests.conftest import gateway_client
from tests.fixtures_faults import gate, reset_gates, wait_ended, wait_status

pytestmark = pytest.mark.anyio

SERVICES = {
    "echo": {"type": "workflow", "source": "examples.echo:workflow"},
    "boom": {"type": "workflow", "source": "tests.fixtures_faults:raising"},
    "stall": {"type": "workflow", "source": "tests.fixtures_faults:hanging", "timeout": 0.1},
    "gated": {"type": "workflow", "source": "tests.fixtures_faults:gated"},
    "stuck": {"type": "custom", "source": "tests.fixtures_faults:StuckService"},
}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition as {(name, sorted labels): value}."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def scrape(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


def value(metrics, name: str, **labels: str) -> float | None:
    return metrics.get((name, tuple(sorted(labels.items()))))


async def submit(client, service: str, kwargs: dict[str, Any] | None = None) -> str:
    response = await client.post(
        "/control_plane/tasks", json={"service": service, "input": kwargs or {}}
    )
    assert response.status_code == 202, response.text
    return response.json()["task_id"]


async def test_tasks_by_service_and_terminal_status_and_latency_histograms() -> None:
    reset_gates()
    async with gateway_client({"services": SERVICES}) as client:
        ids = [await submit(client, "echo", {"message": str(n)}) for n in range(3)]
        ids += [await submit(client, "boom") for _ in range(2)]
        ids.append(await submit(client, "stall"))
        cancelled = await submit(client, "gated", {"gate": "never"})
        await wait_status(client, cancelled, "running")
        assert (await client.post(f"/control_plane/tasks/{cancelled}/cancel")).status_code == 200
        for task_id in ids:
            await wait_ended(client, task_id)

        metrics = await scrape(client)
        expected = {
            ("echo", "completed"): 3,
            ("boom", "failed"): 2,
            ("stall", "timed_out"): 1,
            ("gated", "cancelled"): 1,
        }
        for (service, status), count in expected.items():
            assert value(metrics, "gateway_tasks_total", service=service, status=status) == count
        counted = {
            dict(labels)["service"]: v
            for (name, labels), v in metrics.items()
            if name == "gateway_tasks_total"
        }
        assert sum(counted.values()) == 7  # nothing else was counted

        for service, count in (("echo", 3), ("boom", 2), ("stall", 1), ("gated", 1)):
            histogram = "gateway_task_latency_seconds"
            assert value(metrics, f"{histogram}_count", service=service) == count
            assert value(metrics, f"{histogram}_bucket", service=service, le="+Inf") == count
            buckets = sorted(
                (float(dict(labels)["le"]), v)
                for (name, labels), v in metrics.items()
                if name == f"{histogram}_bucket" and dict(labels)["service"] == service
            )
            assert len(buckets) > 5
            assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
        # The timed-out task took at least its timeout.
        assert value(metrics, "gateway_task_latency_seconds_sum", service="stall") >= 0.1
        assert (
            value(metrics, "gateway_task_latency_seconds_bucket", service="stall", le="0.05") == 0
        )
        assert value(metrics, "gateway_tasks_active") == 0


async def test_queue_depth_per_consumer() -> None:
    reset_gates()
    apps: list = []
    async with gateway_client({"services": SERVICES}, app_out=apps) as client:
        bus = apps[0].state.runtime.bus
        consumers = {s["consumer_id"]: s["message_type"] for s in bus.stats()}
        metrics = await scrape(client)
        for consumer_id, message_type in consumers.items():
            labels = {"consumer_id": consumer_id, "message_type": message_type}
            assert value(metrics, "gateway_queue_depth", **labels) == 0

        held = [await submit(client, "stuck") for _ in range(3)]
        with anyio.fail_after(5):
            await gate("stuck").reached(1).wait()  # one in the handler, two in its buffer
        (stuck_id,) = [c for c, t in consumers.items() if t == "stuck"]
        metrics = await scrape(client)
        assert (
            value(metrics, "gateway_queue_depth", consumer_id=stuck_id, message_type="stuck") == 2
        )
        assert value(metrics, "gateway_tasks_active") == 3

        gate("stuck").opened.set()
        for task_id in held:
            assert (await wait_ended(client, task_id))["status"] == "completed"
        metrics = await scrape(client)
        assert (
            value(metrics, "gateway_queue_depth", consumer_id=stuck_id, message_type="stuck") == 0
        )
        assert value(metrics, "gateway_tasks_active") == 0


class OpenStream:
    """A GET held open straight on the ASGI app (httpx's ASGI transport buffers whole bodies)."""

    def __init__(self, app, path: str) -> None:
        self.app = app
        self.path = path
        self.first_chunk = anyio.Event()
        self.finished = anyio.Event()
        self.disconnect = anyio.Event()
        self.body = b""

    async def run(self) -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": self.path,
            "raw_path": self.path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"gateway"), (b"accept", b"text/event-stream")],
            "client": ("127.0.0.1", 1),
            "server": ("gateway", 80),
        }
        sent_request = False

        async def receive() -> dict:
            nonlocal sent_request
            if not sent_request:
                sent_request = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await self.disconnect.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.body":
                self.body += message.get("body", b"")
                if self.body:
                    self.first_chunk.set()

        try:
            await self.app(scope, receive, send)
        finally:
            self.finished.set()


async def test_sse_subscriber_gauge_follows_open_streams() -> None:
    reset_gates()
    apps: list = []
    async with gateway_client({"services": SERVICES}, app_out=apps) as client:
        task_id = await submit(client, "gated", {"n": 1})
        await wait_status(client, task_id, "running")
        assert value(await scrape(client), "gateway_sse_subscribers") == 0

        streams = [OpenStream(apps[0], f"/control_plane/tasks/{task_id}/events") for _ in range(2)]
        async with anyio.create_task_group() as group:
            for stream in streams:
                group.start_soon(stream.run)
            with anyio.fail_after(5):
                for stream in streams:
                    await stream.first_chunk.wait()
            assert value(await scrape(client), "gateway_sse_subscribers") == 2

            streams[0].disconnect.set()  # a client goes away mid-stream
            with anyio.fail_after(5):
                await streams[0].finished.wait()
            assert value(await scrape(client), "gateway_sse_subscribers") == 1

            gate("main").opened.set()  # the task ends: the other stream ends with its result
            with anyio.fail_after(5):
                await streams[1].finished.wait()
            streams[1].disconnect.set()
        assert b"event: result" in streams[1].body
        assert value(await scrape(client), "gateway_sse_subscribers") == 0


async def test_task_logs_carry_task_id_and_service(caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway.control_plane.plane")
    async with gateway_client({"services": SERVICES}) as client:
        done = await submit(client, "echo", {"message": "hi"})
        failed = await submit(client, "boom")
        await wait_ended(client, done)
        await wait_ended(client, failed)

    ended = {r.task_id: r for r in caplog.records if r.getMessage() == "task ended"}
    assert set(ended) >= {done, failed}
    assert (ended[done].service, ended[done].status) == ("echo", "completed")
    assert (ended[failed].service, ended[failed].status) == ("boom", "failed")
    # only tasks that did not complete are logged at INFO
    assert ended[failed].levelno == logging.INFO and ended[done].levelno == logging.DEBUG

    line = JsonFormatter().format(ended[failed])
    entry = json.loads(line)
    assert entry["task_id"] == failed and entry["service"] == "boom"
    assert entry["status"] == "failed" and entry["message"] == "task ended"
    assert entry["level"] == "INFO" and entry["logger"] == "gateway.control_plane.plane"
    assert "\n" not in line  # one JSON object per line

    text = TextFormatter().format(ended[done])
    assert f"task_id={done}" in text and "service=echo" in text

    # Records without context stay valid JSON, exceptions included.
    try:
        raise ValueError("with a traceback")
    except ValueError:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "plain %s", ("message",), sys.exc_info()
        )
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "plain message" and "task_id" not in entry
    assert "ValueError: with a traceback" in entry["exc"]
