"""The request-body deadline (408) of every request, kept by one loop timer.

A cancel scope and a timer around each `receive` cost ~8 µs of a ~60 µs request, although the
body of almost every request is already there. Every body gets the same timeout, so deadlines
come in the order reads start: a FIFO queue whose head expires first, one timer armed for the
head. A read that ends marks its entry done; when the timer fires it cuts off the reads still
waiting past their deadline (by cancelling their task, as `asyncio.timeout` does) and re-arms
for the next. Under steady traffic the timer is re-armed about once per timeout.

asyncio only: the gateway is served by uvicorn, whose HTTP servers run on asyncio.
"""

from __future__ import annotations

import asyncio
from collections import deque

from starlette.types import Message, Receive

from gateway.web.errors import ApiError


class BodyRead:
    """One request body's deadline; `receive` is its app's `receive`, timed by it."""

    __slots__ = ("deadline", "deadlines", "done", "late", "waiter")

    def __init__(self, deadline: float, deadlines: BodyDeadlines) -> None:
        self.deadline = deadline
        self.deadlines = deadlines
        self.done = False  # the body is complete (or the client left): nothing left to time
        self.late = False  # the deadline passed before the body was complete
        self.waiter: asyncio.Task | None = None  # the task inside `receive`, if one is

    async def receive(self, receive: Receive) -> Message:
        if self.late:
            raise ApiError(408, self.deadlines.detail)
        task = self.waiter = asyncio.current_task()
        assert task is not None
        cancelling = task.cancelling()
        try:
            return await receive()
        except asyncio.CancelledError:
            # Ours alone (not also the server's or a scope's): the deadline answers 408.
            if self.late and task.uncancel() <= cancelling:
                raise ApiError(408, self.deadlines.detail) from None
            raise
        finally:
            self.waiter = None

    def finish(self) -> None:
        """The body is complete (or will not be read on): no deadline any more."""
        if not self.done:
            self.done = True
            self.deadlines.drop_finished()

    def expire(self) -> None:
        self.late = True
        if self.waiter is not None:  # suspended in `receive` (callbacks run between steps)
            self.waiter.cancel()


class BodyDeadlines:
    """Hands out a `BodyRead` per request body, all expiring `timeout` seconds after their
    first read; one loop timer serves them all."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.detail = f"the request body did not arrive within {timeout:g}s"
        self._queue: deque[BodyRead] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> BodyRead:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # an app used from a new loop (tests): start afresh
            self._loop, self._timer = loop, None
            self._queue.clear()
        read = BodyRead(loop.time() + self.timeout, self)
        self._queue.append(read)
        if self._timer is None:  # else it fires no later than this deadline and re-arms
            self._timer = loop.call_at(read.deadline, self._expire)
        return read

    def drop_finished(self) -> None:
        queue = self._queue
        while queue and queue[0].done:
            queue.popleft()

    def __len__(self) -> int:
        return len(self._queue)

    def _expire(self) -> None:
        assert self._loop is not None
        self._timer = None
        now = self._loop.time()
        queue = self._queue
        while queue and (queue[0].done or queue[0].deadline <= now):
            read = queue.popleft()
            if not read.done:
                read.expire()
        if queue:
            self._timer = self._loop.call_at(queue[0].deadline, self._expire)
