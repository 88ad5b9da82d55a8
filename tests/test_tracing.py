"""Tracing: one trace per task, across HTTP, the control plane, the bus, services and tools.

Spans are collected with OpenTelemetry's in-memory exporter, added to the gateway's own tracer
provider (the config says `exporter: none`, so nothing else receives them).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gateway.app import build_app
from gateway.config import ConfigError, parse_config
from gateway.messages import ActionTypes, QueueMessage
from gateway.observe import tracing
from tests.conftest import ROOT, free_port, running_server
from tests.service_tokens import SERVICE_TOKEN, with_remote

pytestmark = pytest.mark.anyio

TRACED = {"enabled": True, "exporter": "none"}
AGENT_SERVICES = {
    "calculator": {"type": "tool", "source": "examples.tools:tools"},
    "assistant": {"type": "agent", "source": "examples.agent:build_agent", "tools": ["calculator"]},
}


def agent_config(**extra: Any) -> dict[str, Any]:
    return {"default_service": "assistant", "services": AGENT_SERVICES, **extra}


@asynccontextmanager
async def traced(
    config: dict[str, Any],
) -> AsyncIterator[tuple[httpx.AsyncClient, InMemorySpanExporter, Any]]:
    app = build_app(parse_config(config, "test-config"))
    exporter = InMemorySpanExporter()
    runtime = app.state.runtime
    if runtime.tracing is not None:
        runtime.tracing.provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client, exporter, app


class Tree:
    """The finished spans of one trace, navigable by name."""

    def __init__(self, spans: list[ReadableSpan]) -> None:
        self.spans = sorted(spans, key=lambda s: s.start_time or 0)
        self.by_id = {s.context.span_id: s for s in self.spans}

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans if s.name == name]

    def one(self, name: str) -> ReadableSpan:
        found = self.named(name)
        assert len(found) == 1, (name, [s.name for s in self.spans])
        return found[0]

    def parent(self, span: ReadableSpan) -> ReadableSpan | None:
        return self.by_id.get(span.parent.span_id) if span.parent else None

    def ancestors(self, span: ReadableSpan) -> list[str]:
        names = []
        current = self.parent(span)
        while current is not None:
            names.append(current.name)
            current = self.parent(current)
        return names

    def roots(self) -> list[ReadableSpan]:
        return [s for s in self.spans if self.parent(s) is None]


def trace_of(exporter: InMemorySpanExporter, trace_id: str) -> Tree:
    spans = [
        s for s in exporter.get_finished_spans() if format(s.context.trace_id, "032x") == trace_id
    ]
    return Tree(spans)


async def test_agent_run_is_one_trace_with_every_step_and_tool_call_parented() -> None:
    async with traced(agent_config(tracing=TRACED)) as (client, exporter, _):
        response = await client.post("/services/assistant/run", json={"input": "(3+4)*5"})
        body = response.json()
        assert body["result"] == "The answer is 35."
        record = (await client.get(f"/control_plane/tasks/{body['task_id']}")).json()
    trace_id = record["trace_id"]
    assert trace_id and len(trace_id) == 32
    tree = trace_of(exporter, trace_id)

    # HTTP request -> task -> service run -> the agent's workflow
    (root,) = tree.roots()
    assert root.name == "POST /services/assistant/run" and root.kind is SpanKind.SERVER
    task = tree.one("task assistant")
    assert tree.parent(task) is root
    assert task.attributes[tracing.TASK_ID] == body["task_id"]
    assert task.attributes[tracing.SERVICE] == "assistant"
    assert task.attributes[tracing.TASK_STATUS] == "completed"
    run = tree.one("run assistant")
    assert tree.parent(run) is task
    agent = tree.one("FunctionAgent.run")
    assert tree.parent(agent) is run

    # the agent's steps are children of its run: three LLM turns, two tool-call steps
    steps = [s for s in tree.spans if tree.parent(s) is agent]
    step_names = [s.name for s in steps]
    assert step_names.count("BaseWorkflowAgent.run_agent_step") == 3
    assert step_names.count("BaseWorkflowAgent.call_tool") == 2

    # each tool call: step -> call (client, in the agent) -> tool (in the tool service)
    for tool in ("add", "multiply"):
        call = tree.one(f"call {tool}")
        assert call.kind is SpanKind.CLIENT
        assert tree.parent(call).name == "BaseWorkflowAgent.call_tool"
        assert tree.parent(tree.parent(call)) is agent
        ran = tree.one(f"tool {tool}")
        assert tree.parent(ran) is call
        assert ran.attributes[tracing.TOOL_NAME] == tool
        assert ran.attributes[tracing.SERVICE] == "calculator"
        # llama-index's own span of the FunctionTool runs under it
        assert any(tree.parent(s) is ran for s in tree.named("FunctionTool.acall"))
    assert all(s.status.status_code is not StatusCode.ERROR for s in tree.spans)


async def test_a_client_traceparent_becomes_the_parent_of_the_root() -> None:
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    headers = {"traceparent": f"00-{trace_id}-{parent_id}-01"}
    async with traced(agent_config(tracing=TRACED)) as (client, exporter, _):
        body = (
            await client.post("/services/assistant/run", json={"input": "2+3"}, headers=headers)
        ).json()
        record = (await client.get(f"/control_plane/tasks/{body['task_id']}")).json()
    assert record["trace_id"] == trace_id
    tree = trace_of(exporter, trace_id)
    (root,) = tree.roots()
    assert root.name == "POST /services/assistant/run"
    assert root.parent is not None and root.parent.span_id == int(parent_id, 16)
    assert root.parent.is_remote
    assert tree.ancestors(tree.one("tool add"))[-1] == root.name


async def test_tracing_off_makes_no_spans_and_no_headers() -> None:
    seen: list[QueueMessage] = []
    async with traced(agent_config()) as (client, _, app):
        runtime = app.state.runtime
        assert runtime.tracing is None
        publish = runtime.bus.publish

        async def spy(message: QueueMessage, timeout: float | None = -1.0) -> None:
            seen.append(message)
            await publish(message, timeout)

        runtime.bus.publish = spy
        body = (await client.post("/services/assistant/run", json={"input": "(3+4)*5"})).json()
        assert body["result"] == "The answer is 35."
        record = (await client.get(f"/control_plane/tasks/{body['task_id']}")).json()
    assert record["trace_id"] is None and "trace" not in record  # headers stay internal
    # the agent's tool call went to the local tool service as is, with no message at all
    # (MessageBus.call_direct, tracing off); every message that was sent carries no headers
    assert {m.action for m in seen} == {ActionTypes.NEW_TASK}
    assert all(m.trace is None for m in seen)


def test_tracing_off_never_imports_opentelemetry_and_runs_without_it(tmp_path: Path) -> None:
    """Without the tracing packages (imports blocked) a gateway with tracing off serves /run;
    and with them installed, tracing off does not even import them."""
    script = tmp_path / "no_otel.py"
    script.write_text(
        "import sys, anyio, httpx\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('opentelemetry', 'openinference'):\n"
        "            raise ImportError(f'blocked {name}', name=name)\n"
        "if sys.argv[1] == 'block':\n"
        "    sys.meta_path.insert(0, Block())\n"
        "from gateway.app import build_app\n"
        "from gateway.config import parse_config\n"
        f"CONFIG = {agent_config()!r}\n"
        "async def main():\n"
        "    app = build_app(parse_config(CONFIG))\n"
        "    async with app.router.lifespan_context(app):\n"
        "        t = httpx.ASGITransport(app=app)\n"
        "        async with httpx.AsyncClient(transport=t, base_url='http://g') as c:\n"
        "            r = await c.post('/services/assistant/run', json={'input': '(3+4)*5'})\n"
        "            print(r.json()['result'])\n"
        "    names = ('opentelemetry', 'openinference')\n"
        "    loaded = [m for m in sys.modules if m.startswith(names)]\n"
        "    print('loaded:', loaded)\n"
        "anyio.run(main)\n"
    )
    for mode in ("block", "installed"):
        out = subprocess.run(
            [sys.executable, str(script), mode],
            cwd=ROOT,
            env={"PYTHONPATH": str(ROOT), "GATEWAY_SECRET": "t", "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines() == ["The answer is 35.", "loaded: []"], out.stdout


def test_tracing_enabled_without_its_packages_is_one_clear_start_up_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "openinference.instrumentation.llama_index", None)
    with pytest.raises(ConfigError) as caught:
        build_app(parse_config(agent_config(tracing=TRACED), "gateway.yaml"))
    message = str(caught.value)
    assert message.startswith("gateway.yaml: tracing:")
    assert "agent-gateway[tracing]" in message and "\n" not in message


def test_otel_environment_variables_win(monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_config(
        agent_config(tracing={"enabled": True, "exporter": "console", "service_name": "mine"})
    )
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    setup = tracing.setup_tracing(config.tracing, config.name)
    assert setup is not None
    assert setup.provider.resource.attributes["service.name"] == "from-env"
    processors = setup.provider._active_span_processor._span_processors
    assert [type(p.span_exporter).__name__ for p in processors] == ["_NoExport"]
    setup.provider.shutdown()
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert tracing.setup_tracing(config.tracing, config.name) is None


def test_otlp_endpoint_from_the_config() -> None:
    assert tracing.traces_url("http://127.0.0.1:4318") == "http://127.0.0.1:4318/v1/traces"
    assert tracing.traces_url("http://collector:4318/custom") == "http://collector:4318/custom"
    with pytest.raises(ConfigError):
        parse_config({"tracing": {"enabled": True, "exporter": "zipkin"}})


def test_the_trace_header_survives_the_wire_and_is_bounded() -> None:
    headers = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    message = QueueMessage(type="svc", action=ActionTypes.NEW_TASK, trace=headers)
    again = QueueMessage.model_validate_json(message.model_dump_json())
    assert again.trace == headers
    assert QueueMessage.model_validate(message.model_dump(mode="json")).trace == headers
    with pytest.raises(ValueError):
        QueueMessage(trace={f"k{i}": "v" for i in range(9)})
    with pytest.raises(ValueError):
        QueueMessage(trace={"traceparent": "x" * 9000})


async def test_errors_are_recorded_on_the_spans(caplog: pytest.LogCaptureFixture) -> None:
    config = {
        "services": {
            **AGENT_SERVICES,
            "stats": {"type": "workflow", "source": "examples.pipeline:build"},
        },
        "tracing": TRACED,
    }
    caplog.set_level(logging.INFO)
    async with traced(config) as (client, exporter, _):
        failed = (
            await client.post("/services/stats/run", json={"kwargs": {"numbers": "nope"}})
        ).json()
        assert failed["status"] == "failed"
        record = (await client.get(f"/control_plane/tasks/{failed['task_id']}")).json()
        answer = (await client.post("/services/assistant/run", json={"input": "1/0"})).json()
        divided = (await client.get(f"/control_plane/tasks/{answer['task_id']}")).json()

    tree = trace_of(exporter, record["trace_id"])
    task = tree.one("task stats")
    assert task.status.status_code is StatusCode.ERROR
    assert "numbers" in (task.status.description or "")
    assert task.attributes[tracing.TASK_STATUS] == "failed"
    assert tree.one("run stats").status.status_code is StatusCode.ERROR

    tool = trace_of(exporter, divided["trace_id"]).one("tool divide")
    assert tool.status.status_code is StatusCode.ERROR
    assert "ZeroDivisionError" in (tool.status.description or "")

    # log records carry the task id and the trace id, so logs and traces join
    failure_logs = [r for r in caplog.records if "failed" in r.getMessage()]
    joined = [r for r in failure_logs if getattr(r, "trace_id", None) == record["trace_id"]]
    assert joined and all(r.task_id == failed["task_id"] for r in joined)


async def test_a_task_submitted_to_the_control_plane_is_traced_too() -> None:
    async with traced(agent_config(tracing=TRACED)) as (client, exporter, _):
        accepted = (
            await client.post("/control_plane/tasks", json={"input": "2*3", "service": "assistant"})
        ).json()
        done = (
            await client.get(f"/control_plane/tasks/{accepted['task_id']}/result?wait=10")
        ).json()
    assert done["status"] == "completed"
    tree = trace_of(exporter, done["trace_id"])
    root = next(s for s in tree.roots() if s.name == "POST /control_plane/tasks")
    assert tree.parent(tree.one("task assistant")) is root
    assert tree.ancestors(tree.one("tool multiply"))[-1] == root.name


def test_real_server_exports_the_trace_to_the_console(tmp_path: Path) -> None:
    config = agent_config(tracing={"enabled": True, "exporter": "console", "service_name": "gw"})
    with running_server(config, tmp_path) as server:
        response = httpx.post(
            server.base_url + "/services/assistant/run", json={"input": "(3+4)*5"}, timeout=30
        )
        body = response.json()
        assert body["result"] == "The answer is 35."
        record = httpx.get(f"{server.base_url}/control_plane/tasks/{body['task_id']}").json()
    # the server has stopped: its batch processor flushed every span to stdout (the log)
    mine = _console_spans(server.log(), record["trace_id"])
    names = {s["name"] for s in mine}
    assert {"POST /services/assistant/run", "task assistant", "run assistant"} <= names
    assert {"call add", "tool add", "call multiply", "tool multiply"} <= names
    assert all(s["resource"]["attributes"]["service.name"] == "gw" for s in mine)


def test_a_trace_crosses_into_a_service_in_another_process(tmp_path: Path) -> None:
    """The NEW_TASK message carries the task's context over HTTP to a remote service, whose
    own gateway (tracing on) runs the task under a child of the task's span."""
    config = with_remote(
        {
            "services": {"echo": {"type": "workflow", "source": "examples.echo:workflow"}},
            "tracing": {"enabled": True, "exporter": "console"},
        }
    )
    remote_log = tmp_path / "remote.log"
    with running_server(config, tmp_path) as gateway:
        port = free_port()
        with remote_log.open("w") as out:
            remote = subprocess.Popen(
                [sys.executable, "-m", "tests.remote_service", "--name", "adder"]
                + ["--source", "tests.fixtures_workflows:add", "--port", str(port)]
                + ["--control-plane", gateway.base_url + "/control_plane", "--trace"],
                cwd=ROOT,
                env={**os.environ, "GATEWAY_SERVICE_TOKEN": SERVICE_TOKEN},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            with httpx.Client(base_url=gateway.base_url, timeout=10) as client:
                _wait_for_remote(client, remote, port, remote_log)
                task = client.post(
                    "/control_plane/tasks", json={"service": "adder", "input": {"a": 2, "b": 40}}
                ).json()
                record = client.get(
                    f"/control_plane/tasks/{task['task_id']}/result", params={"wait": 10}
                ).json()
                assert record["status"] == "completed", record
        finally:
            remote.terminate()
            remote.wait(timeout=20)
    here = _console_spans(gateway.log(), record["trace_id"])
    there = _console_spans(remote_log.read_text(), record["trace_id"])
    (task_span,) = [s for s in here if s["name"] == "task adder"]
    (run_span,) = [s for s in there if s["name"] == "run adder"]
    assert run_span["parent_id"] == task_span["context"]["span_id"]
    assert run_span["attributes"][tracing.TASK_ID] == task["task_id"]
    assert run_span["resource"]["attributes"]["service.name"] == "remote"


def _wait_for_remote(client: httpx.Client, remote: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        assert remote.poll() is None, log.read_text()
        up = False
        with contextlib.suppress(httpx.HTTPError):
            up = httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        if up and "adder" in client.get("/control_plane/services").json():
            return
        assert time.monotonic() < deadline, "remote service did not come up"
        time.sleep(0.1)


def _console_spans(text: str, trace_id: str) -> list[dict[str, Any]]:
    """The spans of one trace that the console exporter printed, among uvicorn's log lines."""
    decoder = json.JSONDecoder()
    spans, index = [], 0
    while (start := text.find("{\n", index)) != -1:
        try:
            value, index = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            index = start + 1
            continue
        if isinstance(value, dict) and value.get("context", {}).get("trace_id") == f"0x{trace_id}":
            spans.append(value)
    return spans


async def test_redis_mode_carries_the_trace_through_the_streams(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bus and store on Redis: the NEW_TASK goes through a Redis Stream (as JSON) and the task
    record through the Redis store, and the task's trace still reaches the run and every tool."""
    from tests.redis_helpers import SECRET, clean_namespace, redis_config

    monkeypatch.setenv("GATEWAY_SECRET", SECRET)
    with clean_namespace() as namespace:
        config = {**redis_config(namespace, AGENT_SERVICES), "tracing": TRACED}
        async with traced(config) as (client, exporter, _):
            body = (await client.post("/services/assistant/run", json={"input": "(3+4)*5"})).json()
            assert body["result"] == "The answer is 35.", body
            record = (await client.get(f"/control_plane/tasks/{body['task_id']}")).json()
    tree = trace_of(exporter, record["trace_id"])
    (root,) = tree.roots()
    assert root.name == "POST /services/assistant/run"
    task = tree.one("task assistant")
    assert tree.parent(task) is root
    assert tree.parent(tree.one("run assistant")) is task
    for tool in ("add", "multiply"):
        assert tree.parent(tree.one(f"tool {tool}")) is tree.one(f"call {tool}")
        assert tree.ancestors(tree.one(f"tool {tool}"))[-3:] == [
            "run assistant",
            "task assistant",
            root.name,
        ]


async def test_an_unreachable_collector_does_not_hold_up_shutdown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import anyio

    from gateway.config import TracingSettings

    monkeypatch.setattr(tracing, "FLUSH_TIMEOUT", 0.5)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    setup = tracing.setup_tracing(
        TracingSettings(enabled=True, exporter="otlp", endpoint=dead), "gw"
    )
    assert setup is not None
    setup.start()
    with setup.tracer.start_as_current_span("lost"):
        pass
    with anyio.fail_after(5):  # the exporter alone would retry for up to 30 s
        await setup.aclose()
