"""A workflow run's stream events, read so that nothing is left for the garbage collector.

`WorkflowHandler.stream_events()` stops right after the StopEvent and leaves the runtime's own
generator (`Context.stream_events()`) suspended at that yield, holding the stream's lock. asyncio
finalizes such a generator by scheduling its `aclose()` as a new task through
`call_soon_threadsafe`: a task, an eventfd write and read, and one more loop turn for every run
(seen with strace: one extra write/read pair per `/run`). This yields the same events (the
internal dispatch events left out, the StopEvent last) from `Context.stream_events()`, public
API too, and closes that generator itself when the StopEvent has been read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from workflows.events import Event, InternalDispatchEvent, StopEvent


async def stream_events(handler: Any) -> AsyncIterator[Event]:
    """What `handler.stream_events()` yields, with the runtime's stream closed at the end.

    Read it to its end (the StopEvent, then one more step): a reader that leaves early leaves
    this generator to the collector instead, as before.
    """
    async with aclosing(handler.ctx.stream_events()) as published:
        async for event in published:
            if isinstance(event, InternalDispatchEvent):
                continue
            yield event
            if isinstance(event, StopEvent):
                return
