"""Event stream throughput: workflow stream events delivered as SSE to 1 and to 10 subscribers.

A workflow writes N events to its stream (`ctx.write_event_to_stream`) once it receives a `Go`
event. The gateway runs under uvicorn (a subprocess on a free loopback port); S subscribers
connect to `GET /control_plane/tasks/{id}/events` (httpx streaming) and read until the run has
paused, then `Go` is sent with `POST /control_plane/tasks/{id}/events` and the clock runs until
every subscriber that was not dropped has read the result event. Baseline, same run, like with
like: the same workflow in this process, its `handler.stream_events()` fanned out to the same
number of readers (bounded in-memory streams, one task per reader). Each figure is the median
of ROUNDS rounds; a round where every subscriber was dropped has no rate and counts as a miss.

    python -m bench.events
"""

from __future__ import annotations

import json
import statistics
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
async def _in_process(count: int, readers: int) -> float:
    """Seconds from sending Go until each of `readers` readers has read all `count` events
    (stream_events() fanned out through bounded in-memory streams)."""
    handler = build().run()
    started = 0.0
    seen = [0] * readers
    streams = [anyio.create_memory_object_stream[Event](256) for _ in range(readers)]

    async def read(n: int) -> None:
        async with streams[n][1] as receive:
            async for event in receive:
                if isinstance(event, Tick):
                    seen[n] += 1

    async with anyio.create_task_group() as tg:
        for n in range(readers):
            tg.start_soon(read, n)
        async for event in handler.stream_events():
            if isinstance(event, Paused):
                started = time.perf_counter()
                handler.ctx.send_event(Go(count=count))
                continue
            for send, _ in streams:
                await send.send(event)
        for send, _ in streams:
            await send.aclose()
    elapsed = time.perf_counter() - started
    assert await handler == count and seen == [count] * readers
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

    @property
    def completed(self) -> bool:
        return not self.lagged and self.ended_at > 0


async def _over_sse(
    base: str, subscribers: int, count: int
) -> tuple[float | None, list[_Subscriber]]:
    """Seconds from POSTing Go until every subscriber that was not dropped has read the result
    event; None when every one was dropped (there is no delivery to time)."""
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
    ends = [sub.ended_at for sub in subs if sub.completed]
    if not ends:
        return None, subs
    elapsed = max(ends) - started
    assert elapsed > 0, elapsed
    return elapsed, subs


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run() -> list[Row]:
    baseline = {
        readers: _median([anyio.run(_in_process, EVENTS, readers) for _ in range(ROUNDS)])
        for readers in SUBSCRIBERS
    }
    rows: list[Row] = []
    config = (
        "services:\n"
        "  burst: {type: workflow, source: 'bench.events:build', max_concurrent_tasks: 4}\n"
    )
    with tempfile.TemporaryDirectory() as tmp, serve_gateway(config, Path(tmp), "events") as base:
        anyio.run(_over_sse, base, 1, 200)  # warm-up
        for subscribers in SUBSCRIBERS:
            times: list[float] = []
            dropped = 0
            for _ in range(ROUNDS):
                elapsed, subs = anyio.run(_over_sse, base, subscribers, EVENTS)
                dropped += sum(s.lagged for s in subs)
                if any(s.ticks != EVENTS for s in subs if s.completed):
                    raise RuntimeError("a subscriber missed events without being dropped")
                if elapsed is not None:
                    times.append(elapsed)
            # a round where every subscriber was dropped delivered nothing: it counts as 0
            rates = sorted([EVENTS / t for t in times] + [0.0] * (ROUNDS - len(times)))
            per_subscriber = _median(rates)
            base_rate = EVENTS / baseline[subscribers]
            label = f"{EVENTS} events -> {subscribers} SSE subscriber(s)"
            rows.append(Row(f"{label}, per subscriber", per_subscriber, base_rate, "events/s"))
            if subscribers > 1:
                rows.append(
                    Row(
                        f"{label}, all delivered",
                        per_subscriber * subscribers,
                        base_rate * subscribers,
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
