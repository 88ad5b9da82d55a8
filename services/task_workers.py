"""Long-lived workers that run a service's tasks, instead of a new task per task.

A task spawned with `TaskGroup.start_soon` costs an asyncio task, anyio's TaskHandle (its own
cancel scope and event) and a loop turn before it starts: ~75k instructions per `/run`, and,
measured with wrk, more time than that (c=1 `/run` 0.84-0.87x of the bare endpoint with a task
each, 0.90-0.95x with workers). Items wait in a queue that workers take from; each submitted
item wakes an idle worker or starts a new one, so nothing waits for a worker, and the service's
own limiter still bounds how many run (how many tasks are in flight is bounded where they are
admitted, as before). An item stays in the queue until a worker takes it: a worker cancelled
while it waits takes nothing with it.

What a task spawned with `start_soon` had, a task run by a worker still has: it lives in the
host's task group (structured concurrency: shutdown cancels it), under its own cancel scope, and
ends exactly once; and it runs in a context of its own, a fresh copy of the one the service
started in (`_InContext`), so what one task's code sets in a context variable never reaches the
next. What differs: that context is the service's, not the submitter's (a task no longer inherits
a request's or a user step's context variables; tracing, which needs the submitter's span as the
parent, keeps a task of its own: BaseService.spawn). And:
- a native `task.cancel()` that is no cancel scope's (user code cancelling "its own" task, now
  the worker, or a timer it forgot to disarm) never stops a worker: BaseService._guarded ends
  that item `cancelled` (here, `abandon` would), and the worker carries on, its cancel count
  cleared, so the next item's own CancelledError is not taken for the gateway's. The one thing
  lost: such a timer firing after its task ended cancels whatever task the worker runs by then
  (before, it hit a finished task). Only user code that runs in the service's own task can do
  this (components, tools run as tasks, a custom `execute`); workflow and agent steps run in
  tasks of their own;
- items still queued when the workers are cancelled (shutdown) go to `abandon`.
At most `max_idle` workers wait for work; above that, a worker that finds nothing to do exits, so
a burst of long tasks (10,000 waiting for a human) leaves no crowd of idle workers behind.
"""

from __future__ import annotations

import contextvars
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, Generic, TypeVar

import anyio
from anyio.abc import TaskGroup

from gateway.contain import cancelled_by_a_scope, clear_stray_cancel

logger = logging.getLogger("services.task_workers")

T = TypeVar("T")
R = TypeVar("R")


class TaskWorkers(Generic[T]):
    """Runs each submitted item with `run` in a long-lived worker of `task_group`."""

    def __init__(
        self,
        run: Callable[[T], Coroutine[Any, Any, None]],
        task_group: TaskGroup,
        name: str,
        max_idle: int,
        abandon: Callable[[T], Awaitable[None]] | None = None,
    ) -> None:
        self._run = run
        self._abandon = abandon
        self._task_group = task_group
        self._name = name
        self._max_idle = max_idle
        self._items: deque[T] = deque()
        self._idle: list[anyio.Event] = []  # one per idle worker, set to wake it
        self._context = contextvars.copy_context()  # the starting service's: see the docstring
        self.workers = 0

    @property
    def idle(self) -> int:
        return len(self._idle)

    def submit(self, item: T) -> None:
        """Queue `item` and wake an idle worker for it, or start one. Never waits."""
        self._items.append(item)
        if self._idle:
            self._idle.pop().set()
            return
        self.workers += 1
        self._context.copy().run(
            self._task_group.start_soon, self._work, name=f"{self._name}-worker"
        )

    async def _work(self) -> None:
        try:
            while True:
                while self._items:
                    item = self._items.popleft()
                    ended = await run_item(self._run(item), self._context, self._name)
                    if not ended and self._abandon is not None:
                        await self._abandon(item)
                if len(self._idle) >= self._max_idle:
                    return
                await self._wait_for_work()
        except BaseException:
            if self._abandon is not None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                    while self._items:
                        await self._abandon(self._items.popleft())
            raise
        finally:
            self.workers -= 1

    async def _wait_for_work(self) -> None:
        wake = anyio.Event()
        self._idle.append(wake)
        try:
            await wake.wait()
        except anyio.get_cancelled_exc_class():
            if wake in self._idle:
                self._idle.remove(wake)
            if cancelled_by_a_scope():
                raise
            _stray_cancel(f"{self._name}: a native cancel reached an idle worker")
            # back to the queue: whatever woke it (if anything) is still there


async def run_item(
    coroutine: Coroutine[Any, Any, None], context: contextvars.Context, worker: str
) -> bool:
    """Run one item of a long-lived worker: `coroutine` in a fresh copy of `context`. False if
    a bare `task.cancel()` from the code it ran (no cancel scope's) ended it: that stops the
    item, never the worker. A scope's cancellation (shutdown) goes on up. Either way, a cancel
    count the code left raised (it cancelled "its own" task and caught it) is cleared."""
    try:
        await in_context(coroutine, context.copy())
    except anyio.get_cancelled_exc_class():
        if cancelled_by_a_scope():  # shutdown: as for a task of its own, it ends
            raise
        _stray_cancel(f"{worker}: an item's code cancelled the worker")
        return False
    clear_stray_cancel()
    return True


def in_context(coroutine: Coroutine[Any, Any, R], context: contextvars.Context) -> _InContext[R]:
    """`await in_context(coro, ctx)`: `coro` with every step of it run inside `ctx`."""
    return _InContext(coroutine, context)


class _InContext(Generic[R]):
    """Await `coroutine` with every step of it run inside `context`.

    A worker's own task has one context for its whole life; each item gets a fresh copy of the
    service's, as a task of its own would have. asyncio sees the same futures and the same
    task: only `Context.run` is added around each step (and each exception thrown in).
    """

    __slots__ = ("_coroutine", "_context")

    def __init__(self, coroutine: Coroutine[Any, Any, R], context: contextvars.Context) -> None:
        self._coroutine = coroutine
        self._context = context

    def __await__(self) -> Generator[Any, Any, R]:
        coroutine, run = self._coroutine, self._context.run
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            try:
                if thrown is None:
                    signal = run(coroutine.send, sent)
                else:
                    error, thrown = thrown, None
                    signal = run(coroutine.throw, error)
            except StopIteration as stop:
                return stop.value
            try:
                sent = yield signal
            except GeneratorExit:
                run(coroutine.close)
                raise
            except BaseException as exc:  # thrown in by the task (a cancellation): pass it on
                thrown, sent = exc, None


def _stray_cancel(what: str) -> None:
    logger.warning("%s; the worker carries on", what)
    clear_stray_cancel()
