"""Workflows for the command-line and client tests."""

from __future__ import annotations

import anyio
from workflows import Context, Workflow, step
from workflows.events import Event, StartEvent, StopEvent


class Tick(Event):
    i: int


class TickerWorkflow(Workflow):
    """Writes `count` Tick events to its stream, `delay` seconds apart, then answers the count."""

    @step
    async def tick(self, ctx: Context, ev: StartEvent) -> StopEvent:
        count = int(ev.get("count", 10))
        delay = float(ev.get("delay", 0.01))
        for i in range(count):
            ctx.write_event_to_stream(Tick(i=i))
            await anyio.sleep(delay)
        return StopEvent(result={"ticks": count})


ticker = TickerWorkflow(timeout=None)
