"""services.run_events: a run's stream events as the handler gives them, with nothing left over.

`WorkflowHandler.stream_events()` leaves the runtime's generator suspended after the StopEvent,
and asyncio then finalizes it with a task of its own and a cross-thread wake-up, on every run.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from workflows.events import StopEvent

from examples.pipeline import Progress, StatsWorkflow
from services.run_events import stream_events
from tests.conftest import agent_with_calc, gateway_client

pytestmark = pytest.mark.anyio


@contextmanager
def finalized_generators() -> Iterator[list[str]]:
    """Names of the async generators asyncio had to finalize (first iterated in the block)."""
    firstiter, finalizer = sys.get_asyncgen_hooks()
    seen: list[str] = []

    def spy(agen: Any) -> None:
        seen.append(agen.__qualname__)
        if finalizer is not None:
            finalizer(agen)

    sys.set_asyncgen_hooks(firstiter, spy)
    try:
        yield seen
        gc.collect()
    finally:
        sys.set_asyncgen_hooks(firstiter, finalizer)


async def test_the_same_events_as_the_handler_gives_in_the_same_order() -> None:
    numbers = {"numbers": [1, 2, 3]}
    by_handler = [e async for e in StatsWorkflow().run(**numbers).stream_events()]
    handler = StatsWorkflow().run(**numbers)
    ours = [e async for e in stream_events(handler)]
    assert [type(e) for e in ours] == [type(e) for e in by_handler]
    assert [e.stage for e in ours if isinstance(e, Progress)] == ["parsed", "validated"]
    assert isinstance(ours[-1], StopEvent) and ours[-1].result["sum"] == 6
    assert (await handler)["count"] == 3


async def test_the_runtimes_stream_is_closed_not_left_to_the_collector() -> None:
    with finalized_generators() as left:
        handler = StatsWorkflow().run(numbers=[4])
        assert [type(e) async for e in stream_events(handler)][-1] is StopEvent
        await handler
    assert not [name for name in left if "stream" in name]


async def test_runs_through_the_gateway_leave_no_generator_behind() -> None:
    config = {
        "services": {
            "stats": {"type": "workflow", "source": "examples.pipeline:build"},
            **agent_with_calc(),
        }
    }
    async with gateway_client(config) as client:
        with finalized_generators() as left:
            run = await client.post("/services/stats/run", json={"kwargs": {"numbers": [2, 4]}})
            asked = await client.post("/services/assistant/run", json={"input": "add 2 and 3"})
    assert run.status_code == 200 and run.json()["status"] == "completed", run.text
    assert asked.status_code == 200 and asked.json()["status"] == "completed", asked.text
    assert not [name for name in left if "stream" in name]
