"""Event stream throughput: workflow stream events delivered as SSE to 1 and to 10 subscribers.

A workflow writes N events to its stream (`ctx.write_event_to_stream`) once it receives a `Go`
event. The gateway runs under uvicorn (a subprocess on a free loopback port); S subscribers
connect to `GET /control_plane/tasks/{id}/events` (httpx streaming) and read until the run has
paused, then `Go` is sent with `POST /control_plane/tasks/{id}/events` and the clock runs until
every subscriber has read the result event. Baseline, same run: the same workflow in this
process, its events consumed directly with `handler.stream_events()`.

    python -m bench.events
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import anyio
import httpx
from workflows import Context, Workflow, step
from workflows.events import Event, StartEvent, StopEvent

from bench.common import Row, run_and_print, serve_gateway

EVENTS = 2000
ROUNDS = 3
SUBSCRIBERS = (1, 10)


# -- the workflow (served as bench.events:build) ------------------------------------------------
class Tick(Event):
    n: int


class Paused(Event):
    pass


class Go(Event):
    count: int = 0


class BurstWorkflow(Workflow):
    @step
    async def start(self, ctx: Context, ev: StartEvent) -> Go | None:
        ctx.write_event_to_stream(Paused())
        return None

    @step
    async def burst(self, ctx: Context, ev: Go) -> StopEvent:
        for n in range(ev.count):
            ctx.write_event_to_stream(Tick(n=n))
        return StopEvent(result=ev.count)


def build() -> BurstWorkflow:
    return BurstWorkflow(timeout=120)


# -- measurements ---------------------------------------------------------------------------------
async def _in_process(count: int) -> float:
    """Seconds from sending Go until the last of `count` events is read from stream_events()."""
    handler = build().run()
    started = 0.0
    seen = 0
    async for event in handler.stream_events():
        if isinstance(event, Paused):
            started = time.perf_counter()
            handler.ctx.send_event(Go(count=count))
        elif isinstance(event, Tick):
            seen += 1
    elapsed = time.perf_counter() - started
    assert await handler == count and seen == count
    return elapsed


class _Subscriber:
    def __init__(self) -> None:
        self.ticks = 0
        self.lagged = False
        self.ended_at = 0.0
        self.paused = anyio.Event()

    async def read(self, http: httpx.AsyncClient, url: str) -> None:
        async with http.stream("GET", url) as response:
            kind = None
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    if kind == "event":
                        if '"name":"Tick"' in line:
                            self.ticks += 1
                        elif '"name":"Paused"' in line:
                            self.paused.set()
                    elif kind in ("error", "gap"):
                        self.lagged = True  # it fell behind the replay bound
                    elif kind == "result":
                        self.ended_at = time.perf_counter()
        self.paused.set()


async def _over_sse(base: str, subscribers: int, count: int) -> tuple[float, list[_Subscriber]]:
    """Seconds from POSTing Go until every subscriber has read the result event."""
    limits = httpx.Limits(max_connections=subscribers + 4)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as http:
        response = await http.post(
            "/control_plane/tasks", json={"service": "burst", "input": json.dumps({})}
        )
        task_id = response.json()["task_id"]
        url = f"/control_plane/tasks/{task_id}/events"
        subs = [_Subscriber() for _ in range(subscribers)]
        async with anyio.create_task_group() as tg:
            for sub in subs:
                tg.start_soon(sub.read, http, url)
            for sub in subs:
                await sub.paused.wait()
            started = time.perf_counter()
            sent = await http.post(url, json={"event": "Go", "data": {"count": count}})
            assert sent.status_code == 202, sent.text
        elapsed = max(sub.ended_at for sub in subs) - started
    return elapsed, subs


def run() -> list[Row]:
    baseline = min(anyio.run(_in_process, EVENTS) for _ in range(ROUNDS))
    baseline_rate = EVENTS / baseline
    rows: list[Row] = []
    config = (
        "services:\n"
        "  burst: {type: workflow, source: 'bench.events:build', max_concurrent_tasks: 4}\n"
    )
    with tempfile.TemporaryDirectory() as tmp, serve_gateway(config, Path(tmp), "events") as base:
        anyio.run(_over_sse, base, 1, 200)  # warm-up
        for subscribers in SUBSCRIBERS:
            best = None
            dropped = 0
            for _ in range(ROUNDS):
                elapsed, subs = anyio.run(_over_sse, base, subscribers, EVENTS)
                dropped += sum(s.lagged for s in subs)
                complete = [s for s in subs if not s.lagged]
                if complete and any(s.ticks != EVENTS for s in complete):
                    raise RuntimeError("a subscriber missed events without being dropped")
                best = elapsed if best is None else min(best, elapsed)
            assert best is not None
            label = f"{EVENTS} events -> {subscribers} SSE subscriber(s)"
            rows.append(Row(f"{label}, per subscriber", EVENTS / best, baseline_rate, "events/s"))
            if subscribers > 1:
                rows.append(
                    Row(
                        f"{label}, all delivered",
                        EVENTS * subscribers / best,
                        baseline_rate,
                        "events/s",
                    )
                )
            rows.append(
                Row(
                    f"{label}, subscribers dropped (lagged) in {ROUNDS} rounds",
                    dropped,
                    None,
                    "count",
                    "0",
                    False,
                )
            )
    return rows


def main() -> None:
    run_and_print(
        "events: SSE through uvicorn (value) vs the same stream read in process (baseline)", run
    )


if __name__ == "__main__":
    main()
