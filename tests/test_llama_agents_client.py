"""`llama-agents-client`'s WorkflowClient against agent-gateway served by uvicorn — and the same
scenarios against llama-agents-server's own WorkflowServer, so a protocol change upstream shows
up here as a failing comparison rather than as a silent mismatch."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from llama_agents.client import WorkflowClient
from workflows.events import HumanResponseEvent

from tests.conftest import ROOT, free_port, running_server

pytestmark = pytest.mark.anyio

DEMO = {
    "services": {
        "echo": {"type": "workflow", "source": "examples.echo:workflow"},
        "stats": {"type": "workflow", "source": "examples.pipeline:build"},
        "approval": {
            "type": "workflow",
            "source": "examples.approval:workflow",
            "human_service": "approvers",
        },
        "approvers": {"type": "human"},
    }
}


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(DEMO, tmp_path_factory.mktemp("gateway")) as server:
        yield server.base_url


@pytest.fixture(scope="module")
def reference_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("reference") / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.llama_agents_reference", str(port)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(url, process, log)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


def _wait_for(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"WorkflowServer exited:\n{log.read_text()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"WorkflowServer did not start:\n{log.read_text()}")


def _public(envelope: Any) -> tuple[str, dict]:
    return envelope.type, envelope.value


# -- the scenarios, each returning what a client observes --------------------------------------
async def scenario_run(url: str) -> dict[str, Any]:
    client = WorkflowClient(base_url=url)
    handler = await client.run_workflow("echo", start_event={"message": "hello"})
    return {"status": handler.status, "result": _public(handler.result)}


async def scenario_stream(url: str) -> dict[str, Any]:
    client = WorkflowClient(base_url=url)
    handler = await client.run_workflow_nowait("stats", start_event={"numbers": [1, 2, 3]})
    events = [_public(e) async for e in client.get_workflow_events(handler.handler_id)]
    final = await client.get_handler(handler.handler_id)
    return {"events": events, "status": final.status, "result": _public(final.result)}


async def scenario_human_in_the_loop(url: str) -> dict[str, Any]:
    client = WorkflowClient(base_url=url)
    handler = await client.run_workflow_nowait("approval", start_event={"request": "deploy"})
    seen = []
    async for event in client.get_workflow_events(handler.handler_id):
        seen.append(event.type)
        if event.type == "InputRequiredEvent":
            prompt = event.value
            sent = await client.send_event(handler.handler_id, HumanResponseEvent(response="yes"))
            assert sent.status == "sent"
    final = await client.get_handler(handler.handler_id)
    return {"seen": seen, "prompt": prompt, "status": final.status, "result": _public(final.result)}


SCENARIOS = [scenario_run, scenario_stream, scenario_human_in_the_loop]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
async def test_same_observable_answers_as_workflow_server(
    scenario: Any, gateway_url: str, reference_url: str
) -> None:
    ours = await scenario(gateway_url)
    theirs = await scenario(reference_url)
    assert ours == theirs
    assert ours["status"] == "completed"


async def test_list_get_and_cancel_handlers(gateway_url: str) -> None:
    client = WorkflowClient(base_url=gateway_url)
    assert {"echo", "stats", "approval"} <= set((await client.list_workflows()).workflows)
    assert (await client.is_healthy()).status == "healthy"
    waiting = await client.run_workflow_nowait("approval", start_event={"request": "x"})
    listed = await client.get_handlers(status=["running"], workflow_name=["approval"])
    assert waiting.handler_id in [h.handler_id for h in listed.handlers]
    cancelled = await client.cancel_handler(waiting.handler_id)
    assert cancelled.status == "cancelled"
    with pytest.raises(httpx.HTTPStatusError):  # the protocol answers 500 for a cancelled one
        await client.get_handler(waiting.handler_id)
    stream = client.get_workflow_events(waiting.handler_id)
    kinds = [e.type async for e in stream]
    assert kinds[-1] == "WorkflowCancelledEvent"


async def test_resume_after_a_dropped_connection_loses_and_repeats_nothing(
    gateway_url: str,
) -> None:
    client = WorkflowClient(base_url=gateway_url)
    handler = await client.run_workflow_nowait("stats", start_event={"numbers": [4, 5]})
    everything = [
        (client_seq, e.type)
        async for client_seq, e in _numbered(client.get_workflow_events(handler.handler_id))
    ]
    assert [t for _, t in everything] == ["Progress", "Progress", "StopEvent"]
    first = client.get_workflow_events(handler.handler_id)
    async for _ in first:
        break  # the connection drops after the first event
    resumed = client.get_workflow_events(handler.handler_id, after_sequence=first.last_sequence)
    rest = [(seq, e.type) async for seq, e in _numbered(resumed)]
    assert [everything[0]] + rest == everything


async def _numbered(stream: Any) -> Any:
    async for event in stream:
        yield stream.last_sequence, event
