"""Long-lived workers that run a service's tasks, instead of a new task per task.

A task spawned with `TaskGroup.start_soon` costs an asyncio task, anyio's TaskHandle (its own
cancel scope and event) and a loop turn before it starts: ~90k instructions per `/run`, and,
measured with wrk, more time than that (c=1 `/run` 0.84-0.87x of the bare endpoint with a task
each, 0.90-0.95x with workers). A worker takes the next task from an in-memory queue
and runs it; there is always an idle worker for each queued item (one is started when none is
idle), so nothing waits for a worker, and the service's own limiter still bounds how many run
(how many tasks are in flight is bounded where they are admitted, as before).

What a task spawned with `start_soon` had, a task run by a worker still has: it lives in the
host's task group (structured concurrency: shutdown cancels it), under its own cancel scope, and
ends exactly once. What differs:
- it starts in the context the service had when it was started (the lifespan's), not in that of
  whoever submitted it: a task no longer inherits a request's or a user step's context variables
  (the services' own code sets what a task needs; tracing, which needs the submitter's span as
  parent, keeps a task of its own: BaseService.spawn);
- a worker whose task was left with a cancellation pending (user code that cancelled its own
  task and swallowed the CancelledError) retires after that item, so the next task starts clean;
- items still queued when a running worker is cancelled (shutdown) go to `abandon`.
At most `max_idle` workers wait for work; above that, a worker that finishes an item exits, so
a burst of long tasks (10,000 waiting for a human) leaves no crowd of idle workers behind.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import anyio
from anyio.abc import TaskGroup

T = TypeVar("T")


class TaskWorkers(Generic[T]):
    """Runs each submitted item with `run` in a long-lived worker of `task_group`."""

    def __init__(
        self,
        run: Callable[[T], Awaitable[None]],
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
        self._send, self._receive = anyio.create_memory_object_stream[T](math.inf)
        self._context = contextvars.copy_context()  # the starting service's: see the docstring
        self.workers = 0
        self.idle = 0  # workers waiting for an item that none was promised to yet

    def submit(self, item: T) -> None:
        """Run `item` in a worker: an idle one, else a new one. Never waits."""
        if self.idle:
            self.idle -= 1
        else:
            self.workers += 1
            self._context.copy().run(
                self._task_group.start_soon, self._work, name=f"{self._name}-worker"
            )
        self._send.send_nowait(item)

    async def _work(self) -> None:
        try:
            while True:
                item = await self._receive.receive()
                await self._run(item)
                if self.idle >= self._max_idle or _cancel_pending():
                    return
                self.idle += 1
        except BaseException:
            if self._abandon is not None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                    await self._abandon_queued()
            raise
        finally:
            self.workers -= 1

    async def _abandon_queued(self) -> None:
        assert self._abandon is not None
        while True:
            try:
                item = self._receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                return
            await self._abandon(item)


def _cancel_pending() -> bool:
    """Is a cancellation of this (asyncio) task still counted, left by what it ran?"""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # not on asyncio: anyio's own scopes leave nothing behind there
        return False
    return task is not None and task.cancelling() > 0
