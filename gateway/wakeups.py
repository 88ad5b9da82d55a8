"""Deadlines of many waiters, kept by one loop timer.

Two users: long-polls on tasks and tool calls over the bus. A waiter on a task (`/run`, `GET
.../result?wait=`) sleeps until the task ends or its `wait` runs out. A cancel scope with a
deadline around each wait (and its anyio.Event) cost ~46k instructions of a /run; instead each
waiter sleeps on an asyncio.Event of its own, which the task's end sets, and this sets it at its
deadline. Clients choose their `wait`, so deadlines do not come in order: a heap of them, one loop
timer armed for the earliest (gateway.web.deadlines keeps the body deadlines the same way, in a
FIFO since those all have one timeout). A waiter that returns first withdraws its entry: the entry
lets go of its event at once, and leaves the heap when it reaches the head or when withdrawn
entries make up most of the heap. Under steady traffic the timer is re-armed about once per `wait`.
A tool call over the bus (services.tool.meta_tool) adds an entry whose `set` cancels the call's
scope: a scope's own deadline is a timer armed and cancelled per call.

asyncio only (the gateway is served by uvicorn, whose HTTP servers run on asyncio): on another
anyio backend, both keep the deadline with a cancel scope instead.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from heapq import heapify, heappop, heappush
from typing import Any

import anyio

# Withdrawn entries are swept out of the heap once there are more of them than this and than
# live ones: the heap stays within twice its live entries (plus this), at O(1) per withdrawal.
_SWEEP_AFTER = 64


def asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop, or None on another anyio backend (where `Wakeups` cannot
    serve and callers keep their deadline with a cancel scope)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


_asyncio_scope_class: type[anyio.CancelScope] | None = None


def asyncio_cancel_scope() -> anyio.CancelScope:
    """`anyio.CancelScope()` for a caller that knows it runs on asyncio (`asyncio_loop()`).

    `anyio.CancelScope()` asks which async library runs (sniffio) and builds the backend's
    scope through it: more than a third of an empty scope's cost, per tool call. The class it
    builds is learned from the first scope (if it is anyio's asyncio backend's) and built
    directly after that. Not for trio in guest mode, which runs on an asyncio loop too."""
    global _asyncio_scope_class
    if _asyncio_scope_class is None:
        scope = anyio.CancelScope()
        if type(scope).__module__ == "anyio._backends._asyncio":
            _asyncio_scope_class = type(scope)
        return scope
    return _asyncio_scope_class()


class Wakeups:
    """Sets each added event at its deadline unless it is withdrawn first."""

    __slots__ = ("_armed", "_heap", "_loop", "_seq", "_timer", "_withdrawn")

    def __init__(self) -> None:
        self._heap: list[list[Any]] = []  # [deadline, seq, event or None once withdrawn/set]
        self._withdrawn = 0  # entries in the heap whose event is None
        self._seq = itertools.count()  # ties on the deadline: never compare the events
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._armed = math.inf  # when the timer fires

    def __len__(self) -> int:
        """Entries in the heap, withdrawn ones not yet swept out included."""
        return len(self._heap)

    def add(self, loop: asyncio.AbstractEventLoop, deadline: float, event: Any) -> list[Any]:
        """Set `event` (anything with `set()`) at `deadline` (`loop.time()`); the entry returned
        is what `withdraw` takes. A NaN deadline is refused: it would sit at the head of the
        heap (every comparison with it is false) and keep every deadline behind it from firing."""
        if deadline != deadline:  # NaN
            raise ValueError("a deadline cannot be NaN")
        if loop is not self._loop:  # used from a new loop (tests): the old one's waiters are gone
            self._reset(loop)
        entry = [deadline, next(self._seq), event]
        heappush(self._heap, entry)
        if deadline < self._armed:
            if self._timer is not None:
                self._timer.cancel()
            self._armed = deadline
            self._timer = loop.call_at(deadline, self._fire)
        return entry

    def withdraw(self, entry: list[Any]) -> None:
        """Forget an entry (its waiter returned): its event is let go of at once."""
        if entry[2] is None:  # already set, or its loop is gone
            return
        entry[2] = None
        self._withdrawn += 1
        heap = self._heap
        while heap and heap[0][2] is None:
            heappop(heap)
            self._withdrawn -= 1
        if self._withdrawn > _SWEEP_AFTER and 2 * self._withdrawn > len(heap):
            heap[:] = [kept for kept in heap if kept[2] is not None]
            heapify(heap)
            self._withdrawn = 0

    def _fire(self) -> None:
        assert self._loop is not None
        self._timer, self._armed = None, math.inf
        now = self._loop.time()
        heap = self._heap
        while heap and (heap[0][2] is None or heap[0][0] <= now):
            entry = heappop(heap)
            event = entry[2]
            if event is None:
                self._withdrawn -= 1
            else:
                entry[2] = None
                event.set()
        if heap:
            self._armed = heap[0][0]
            self._timer = self._loop.call_at(self._armed, self._fire)

    def _reset(self, loop: asyncio.AbstractEventLoop) -> None:
        for entry in self._heap:
            entry[2] = None  # a late `withdraw` of the old loop's waiters finds nothing to do
        self._heap.clear()
        self._withdrawn = 0
        self._loop, self._timer, self._armed = loop, None, math.inf
