"""A workflow writing a burst of events far larger than the replay bound: a reader that keeps up
gets all of them; a reader that does not read is told what it missed (a gap event)."""

from __future__ import annotations

import anyio
import pytest
from workflows import Context, Workflow, step
from workflows.events import Event, StartEvent, StopEvent

from gateway.messages import TaskDefinition
from tests.conftest import gateway_client

pytestmark = pytest.mark.anyio

BURST = 1000


class Tick(Event):
    n: int


class BurstWorkflow(Workflow):
    @step
    async def burst(self, ctx: Context, ev: StartEvent) -> StopEvent:
        gate = ev.get("gate")
        if gate:
            await GATES[gate].wait()
        for n in range(BURST):  # no await in between: one burst
            ctx.write_event_to_stream(Tick(n=n))
        return StopEvent(result="done")


GATES: dict[str, anyio.Event] = {}
burst = BurstWorkflow(timeout=30)


async def test_a_reader_that_keeps_up_gets_every_event_of_a_burst() -> None:
    config = {
        "events": {"replay_size": 8},
        "services": {"burst": {"type": "workflow", "source": "tests.test_event_burst:burst"}},
    }
    GATES["b1"] = anyio.Event()
    apps: list = []
    async with gateway_client(config, app_out=apps):
        cp = apps[0].state.runtime.control_plane
        record = await cp.submit(TaskDefinition(input='{"gate": "b1"}'), "burst")
        keeping_up = cp.subscribe(record.task_id)
        idle = cp.subscribe(record.task_id)  # subscribed, never reads
        received: list = []

        async def read() -> None:
            async for event in keeping_up:
                received.append(event)

        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            await anyio.sleep(0)
            GATES["b1"].set()
            with anyio.fail_after(20):
                done = await cp.wait(record.task_id, 20)
        idle_events = [event async for event in idle]

    assert done.status.value == "completed"
    ticks = [e.data["n"] for e in received if e.name == "Tick"]
    assert ticks == list(range(BURST)), "a reader that keeps up lost events of the burst"
    assert not [e for e in received if e.kind == "error"]
    assert received[-1].kind == "result"
    assert [e.seq for e in received] == list(range(1, len(received) + 1))
    # the reader that never read fell behind: a gap event, then the held tail, result last
    assert idle_events[0].kind == "gap"
    assert idle_events[0].data["dropped"] == len(received) - 8
    assert idle_events[-1].kind == "result" and len(idle_events) == 9
