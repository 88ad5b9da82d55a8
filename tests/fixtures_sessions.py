"""Test-only workflows and helpers for the session, state, event and restart tests.

Workflows are referenced from config dicts as `tests.fixtures_sessions:<name>`. In-process tests
coordinate with running workflows through `Probe` (per-test gates and a log, created inside the
test's event loop); tests against a real server use events sent with
`POST /control_plane/tasks/{id}/events` instead.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
from workflows import Context, Workflow, step
from workflows.events import Event, StartEvent, StopEvent


# -- in-process coordination ------------------------------------------------------------------
@dataclass
class Probe:
    """What gated workflows report to and wait on; `PROBES[key]` is set up by the test."""

    log: list[str] = field(default_factory=list)
    gates: dict[str, anyio.Event] = field(default_factory=dict)
    active: int = 0
    max_active: int = 0
    arrived: int = 0
    all_arrived: anyio.Event = field(default_factory=anyio.Event)

    def gate(self, label: str) -> anyio.Event:
        return self.gates.setdefault(label, anyio.Event())


PROBES: dict[str, Probe] = {}


def new_probe(key: str) -> Probe:
    PROBES[key] = probe = Probe()
    return probe


class GatedWorkflow(Workflow):
    """Logs start/end of each run and, between them, waits for the probe's gate `label`."""

    @step
    async def run_gated(self, ev: StartEvent) -> StopEvent:
        probe = PROBES[ev.get("key")]
        label = str(ev.get("label"))
        probe.active += 1
        probe.max_active = max(probe.max_active, probe.active)
        probe.log.append(f"start:{label}")
        try:
            if ev.get("hold", True):
                with anyio.fail_after(10):
                    await probe.gate(label).wait()
        finally:
            probe.active -= 1
            probe.log.append(f"end:{label}")
        return StopEvent(result=label)


class RendezvousWorkflow(Workflow):
    """Every run waits until `parties` runs have arrived: it fails (timeout) if runs are serial."""

    @step
    async def meet(self, ev: StartEvent) -> StopEvent:
        probe = PROBES[ev.get("key")]
        probe.arrived += 1
        if probe.arrived >= int(ev.get("parties", 2)):
            probe.all_arrived.set()
        with anyio.fail_after(float(ev.get("within", 5))):
            await probe.all_arrived.wait()
        return StopEvent(result=f"met:{ev.get('label')}")


def gated() -> GatedWorkflow:
    return GatedWorkflow(timeout=30)


def rendezvous() -> RendezvousWorkflow:
    return RendezvousWorkflow(timeout=30)


# -- streams and events sent into runs --------------------------------------------------------
class Tick(Event):
    n: int


class Paused(Event):
    ticks_so_far: int


class Go(Event):
    """Sent into a paused run with `POST /control_plane/tasks/{id}/events`."""

    note: str = ""
    extra_ticks: int = 0


class StreamWorkflow(Workflow):
    """Writes `before` Tick events; with `wait`, pauses until a Go event arrives, then more."""

    @step
    async def start(self, ctx: Context, ev: StartEvent) -> Go | None:
        before = int(ev.get("before", 3))
        for n in range(before):
            ctx.write_event_to_stream(Tick(n=n))
        await ctx.store.set("before", before)
        if ev.get("wait", False):
            ctx.write_event_to_stream(Paused(ticks_so_far=before))
            return None
        return Go(note="auto")

    @step
    async def finish(self, ctx: Context, ev: Go) -> StopEvent:
        before = await ctx.store.get("before")
        for n in range(before, before + ev.extra_ticks):
            ctx.write_event_to_stream(Tick(n=n))
        return StopEvent(result={"ticks": before + ev.extra_ticks, "note": ev.note})


class WaiterWorkflow(Workflow):
    """The llama-index human-in-the-loop shape: a step that waits with `ctx.wait_for_event`."""

    @step
    async def ask(self, ctx: Context, ev: StartEvent) -> StopEvent:
        answer = await ctx.wait_for_event(Go, waiter_event=Paused(ticks_so_far=0), waiter_id="go")
        return StopEvent(result=f"answered:{answer.note}")


class SleeperWorkflow(Workflow):
    """`block=true` sleeps (practically) forever; otherwise answers at once."""

    @step
    async def sleep(self, ev: StartEvent) -> StopEvent:
        if ev.get("block", False):
            await anyio.sleep(3600)
        return StopEvent(result=f"done:{ev.get('label', '')}")


def stream() -> StreamWorkflow:
    return StreamWorkflow(timeout=60)


def waiter() -> WaiterWorkflow:
    return WaiterWorkflow(timeout=60)


def sleeper() -> SleeperWorkflow:
    return SleeperWorkflow(timeout=None)


# -- config and HTTP helpers ------------------------------------------------------------------
def config(services: dict[str, dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A gateway config dict whose services are workflows of this module (or examples)."""
    entries = {}
    for name, spec in services.items():
        entry = {"type": "workflow", **spec}
        if ":" not in entry["source"]:
            entry["source"] = f"tests.fixtures_sessions:{entry['source']}"
        entries[name] = entry
    return {"name": "sessions-test", "shutdown_grace": 1, "services": entries, **extra}


async def create_session(client: httpx.AsyncClient) -> str:
    response = await client.post("/control_plane/sessions")
    assert response.status_code == 201, response.text
    return response.json()["session_id"]


async def submit(
    client: httpx.AsyncClient, service: str, kwargs: dict[str, Any], session_id: str | None = None
) -> str:
    body: dict[str, Any] = {"service": service, "input": kwargs}
    if session_id:
        body["session_id"] = session_id
    response = await client.post("/control_plane/tasks", json=body)
    assert response.status_code == 202, response.text
    return response.json()["task_id"]


async def wait_result(client: httpx.AsyncClient, task_id: str, wait: float = 10) -> dict:
    """Long-poll until the task ends; fails the test if it does not end within `wait`."""
    response = await client.get(f"/control_plane/tasks/{task_id}/result", params={"wait": wait})
    assert response.status_code == 200, f"task {task_id} did not end: {response.text}"
    return response.json()


async def wait_status(
    client: httpx.AsyncClient, task_id: str, status: str, timeout: float = 10
) -> dict:
    """Bounded polling of a task's status until it is `status`."""
    deadline = time.monotonic() + timeout
    while True:
        body = (await client.get(f"/control_plane/tasks/{task_id}")).json()
        if body["status"] == status:
            return body
        assert time.monotonic() < deadline, f"task {task_id} is {body['status']}, not {status}"
        await anyio.sleep(0.02)


def _checked(event_id: str | None, data: dict | None) -> dict:
    """Every frame has an `id:`, and it is the event's `seq`."""
    assert event_id is not None, f"an SSE frame without id: {data}"
    assert data is not None and int(event_id) == data.get("seq"), (event_id, data)
    return data


def parse_sse(lines: list[str]) -> list[tuple[str, dict]]:
    """`id:`/`event:`/`data:` lines of a Server-Sent Events body -> [(kind, data), ...]."""
    events: list[tuple[str, dict]] = []
    event_id, kind, data = None, None, None
    for line in lines:
        if line.startswith("id:"):
            event_id = line.split(":", 1)[1].strip()
        elif line.startswith("event:"):
            kind = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            data = json.loads(line.split(":", 1)[1])
        elif line == "" and kind is not None:
            events.append((kind, _checked(event_id, data)))
            event_id, kind, data = None, None, None
    if kind is not None:
        events.append((kind, _checked(event_id, data)))
    return events


class SseReader:
    """Reads one SSE stream event by event (for live tests against a real server)."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.aiter_lines()
        self.events: list[tuple[str, dict]] = []

    async def next(self) -> tuple[str, dict] | None:
        event_id, kind, data = None, None, None
        async for line in self._lines:
            if line.startswith("id:"):
                event_id = line.split(":", 1)[1].strip()
            elif line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                data = json.loads(line.split(":", 1)[1])
            elif line == "" and kind is not None:
                data = _checked(event_id, data)
                self.events.append((kind, data))
                return kind, data
        return None

    async def until(self, predicate) -> tuple[str, dict]:
        while True:
            item = await self.next()
            assert item is not None, f"stream ended before the awaited event: {self.events}"
            if predicate(item):
                return item

    async def rest(self) -> list[tuple[str, dict]]:
        while await self.next() is not None:
            pass
        return self.events


def summary(events: list[tuple[str, dict]]) -> list[str]:
    """Compact, comparable form: 'status:pending', 'event:Tick:0', 'result:completed', ..."""
    out = []
    for kind, data in events:
        if kind == "status":
            out.append(f"status:{data['status']}")
        elif kind == "event":
            n = data.get("data", {}).get("n")
            out.append(f"event:{data['name']}" + (f":{n}" if n is not None else ""))
        elif kind == "result":
            out.append(f"result:{data['status']}")
        else:
            out.append(f"{kind}:{data.get('name', '')}")
    return out
