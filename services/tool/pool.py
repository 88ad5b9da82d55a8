"""A bounded pool of long-lived workers: the tool service's concurrency bound."""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio
from anyio.abc import TaskGroup

from gateway.messages import ToolCall
from services.task_workers import run_item


class WorkerPool:
    """Up to `size` long-lived workers fed by a bounded FIFO queue.

    Cheaper than a task per call (anyio's `start_soon` is the largest single cost of a bus
    round trip) and the number of workers is the concurrency bound. Workers start on demand and
    live as long as the task group; `run` must answer its item itself and never raise. When the
    workers are cancelled (shutdown), items still queued go to `abandon`, so they are answered
    too instead of leaving their callers to wait out a timeout.
    """

    def __init__(
        self,
        size: int,
        queue_size: int,
        run: Callable[[ToolCall], Coroutine[Any, Any, None]],
        task_group: TaskGroup,
        name: str,
        abandon: Callable[[ToolCall], Awaitable[None]] | None = None,
    ) -> None:
        self._size = size
        self._run = run
        self._abandon = abandon
        self._task_group = task_group
        self._name = name
        self._send, self._receive = anyio.create_memory_object_stream[ToolCall](queue_size)
        self._workers = 0
        self._context = contextvars.copy_context()  # the tool service's, when it started
        self._free = 0  # idle workers that no queued item has been promised to yet

    @property
    def workers(self) -> int:
        return self._workers

    async def submit(self, item: ToolCall) -> None:
        """Queue `item`; waits only when `queue_size` items are already waiting."""
        if self._free:
            self._free -= 1
        elif self._workers < self._size:
            self._workers += 1
            self._task_group.start_soon(self._work, name=f"{self._name}-{self._workers}")
        try:
            self._send.send_nowait(item)
        except anyio.WouldBlock:
            await self._send.send(item)

    async def _work(self) -> None:
        try:
            while True:
                item = await self._receive.receive()
                # A call ended by a bare task.cancel() from its tool was answered `cancelled`
                # already (ToolService._run_call_in): the worker just goes on.
                await run_item(self._run(item), self._context, self._name)
                self._free += 1
        except BaseException:
            if self._abandon is not None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                    await self._abandon_queued()
            raise

    async def _abandon_queued(self) -> None:
        assert self._abandon is not None
        while True:
            try:
                item = self._receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                return
            await self._abandon(item)
