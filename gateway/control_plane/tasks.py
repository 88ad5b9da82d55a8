"""The task table: every accepted task, its status, and the events that wake its waiters.

A task reaches exactly one terminal state: `finish` refuses a second one. Each waiter blocks on
an event of its own that `finish` sets, so long-polls return the moment a task ends; its `wait`
running out sets it too (one shared loop timer, gateway.wakeups).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import math
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Annotated, Any

import anyio
from anyio.lowlevel import checkpoint
from pydantic import BaseModel, Field, TypeAdapter
from pydantic.dataclasses import dataclass
from typing_extensions import TypedDict

from gateway.messages import ChatMessage, TaskDefinition, TaskResult, TaskStatus, TraceHeaders
from gateway.wakeups import Wakeups, asyncio_loop


class Task(BaseModel):
    """A task as our API shows it: every endpoint that answers a task answers this shape."""

    task_id: str
    service: str
    session_id: str | None = None
    input: Any = Field(default="", description="the input exactly as it was sent")
    status: TaskStatus
    result: Any = Field(
        default=None,
        description="the output as JSON (workflow return value, component output, agent "
        "answer, person's answer, tool output); null unless completed",
    )
    error: str | None = Field(default=None, description="why it failed, timed out or stopped")
    history: list[ChatMessage] = Field(default_factory=list, description="chat turns, if any")
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    trace_id: str | None = Field(default=None, description="its OpenTelemetry trace (when on)")


def shown_result(status: TaskStatus, outcome: TaskResult | None) -> Any:
    """A task's `result` as our API shows it: the output (else the result text) of a completed
    task, None otherwise."""
    if outcome is None or status is not TaskStatus.COMPLETED:
        return None
    return outcome.output if outcome.output is not None else (outcome.result or None)


def encode_input(value: Any) -> str:
    """The text a service receives: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


@dataclass(slots=True)
class TaskRecord:
    """What the control plane knows about one task (also what the store keeps).

    A slotted (pydantic) dataclass, not a model: a gateway may hold ten thousand waiting tasks,
    and a model instance with its field dict and fields-set costs about 1.3 KB where this costs
    about 130 bytes. Construction is validated as before; `model_dump`, `model_dump_json`,
    `model_validate`, `model_validate_json` and `model_copy` keep the model API for callers.
    """

    task_id: str
    service: str
    session_id: str | None = None
    input: Any = ""  # as sent: text, or the JSON value
    status: TaskStatus = TaskStatus.PENDING
    result: TaskResult | None = None
    error: str | None = None
    created_at: float = dataclasses.field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    trace_id: Annotated[str | None, Field(description="its OpenTelemetry trace (when on)")] = None
    trace: Annotated[
        TraceHeaders | None,
        Field(description="W3C context of the task's span: later work parents to it"),
    ] = None
    last_seq: Annotated[int, Field(description="seq of the task's latest event (SSE id)")] = 0

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal

    def definition(self) -> TaskDefinition:
        """The task as its service received it (the reference's TaskDefinition shape)."""
        return TaskDefinition(
            task_id=self.task_id,
            input=encode_input(self.input),
            session_id=self.session_id,
            agent_id=self.service,
        )

    def view(self) -> Task:
        """Our API's shape of this task (`result` is the output, whatever the service type)."""
        return Task(**self._view_fields())

    def view_json(self) -> bytes:
        """`view()` as JSON, the same bytes without building and validating a Task first."""
        return _view_adapter().dump_json(self._view_fields())

    def _view_fields(self) -> dict[str, Any]:
        outcome = self.result
        return {
            "task_id": self.task_id,
            "service": self.service,
            "session_id": self.session_id,
            "input": self.input,
            "status": self.status,
            "result": shown_result(self.status, outcome),
            "error": self.error,
            "history": outcome.history if outcome is not None else [],
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "trace_id": self.trace_id,
        }

    # -- the model API, through one TypeAdapter ------------------------------------------------
    def model_dump(self, **options: Any) -> dict[str, Any]:
        return _adapter().dump_python(self, **options)

    def model_dump_json(self, **options: Any) -> str:
        return _adapter().dump_json(self, **options).decode()

    @classmethod
    def model_validate(cls, data: Any) -> TaskRecord:
        return _adapter().validate_python(data)

    @classmethod
    def model_validate_json(cls, data: str | bytes) -> TaskRecord:
        return _adapter().validate_json(data)

    def model_copy(self, *, update: dict[str, Any] | None = None) -> TaskRecord:
        return dataclasses.replace(self, **(update or {}))


@functools.cache
def _adapter() -> TypeAdapter[TaskRecord]:
    return TypeAdapter(TaskRecord)


@functools.cache
def _view_adapter() -> TypeAdapter[Any]:
    """Task's fields as a TypedDict: a dict of a record's (already validated) values written
    through it is the JSON of a Task built from them (tests/test_compact_records.py)."""
    fields = {name: field.annotation for name, field in Task.model_fields.items()}
    return TypeAdapter(TypedDict("TaskFields", fields))


class TaskTable:
    """In-memory index of tasks; finished ones past `retain_finished` are dropped oldest first."""

    def __init__(self, retain_finished: int = 10_000) -> None:
        self.retain_finished = retain_finished
        self._records: dict[str, TaskRecord] = {}
        # The events of a live task's waiters, each its own, so a deadline wakes just the one.
        self._done: dict[str, list[Any]] = {}
        self._wakeups = Wakeups()
        self._finished_order: OrderedDict[str, None] = OrderedDict()
        self._active_by_service: dict[str, int] = {}

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._records

    def __len__(self) -> int:
        return len(self._records)

    def get(self, task_id: str) -> TaskRecord | None:
        return self._records.get(task_id)

    def all(self) -> Iterable[TaskRecord]:
        return self._records.values()

    def active(self) -> list[TaskRecord]:
        return [r for r in self._records.values() if not r.is_terminal]

    def active_count(self, service: str | None = None) -> int:
        if service is None:
            return sum(self._active_by_service.values())
        return self._active_by_service.get(service, 0)

    def add(self, record: TaskRecord) -> TaskRecord:
        if record.task_id in self._records:
            raise KeyError(record.task_id)
        self._records[record.task_id] = record
        if record.is_terminal:
            self._remember_finished(record.task_id)
        else:
            self._active_by_service[record.service] = self.active_count(record.service) + 1
        return record

    def discard(self, task_id: str) -> None:
        """Forget a task that was never accepted (its dispatch failed)."""
        record = self._records.pop(task_id, None)
        if record is not None and not record.is_terminal:
            self._active_by_service[record.service] -= 1
        self._done.pop(task_id, None)

    def drop_finished(self, task_id: str) -> None:
        """Forget a finished task the store's retention deleted (a live one is never dropped)."""
        record = self._records.get(task_id)
        if record is not None and record.is_terminal:
            del self._records[task_id]
            self._finished_order.pop(task_id, None)

    def set_status(self, task_id: str, status: TaskStatus) -> TaskRecord | None:
        """Move a live task to a non-terminal status; terminal tasks stay as they are."""
        record = self._records.get(task_id)
        if record is None or record.is_terminal or status.is_terminal:
            return None
        if status is TaskStatus.RUNNING and record.started_at is None:
            record.started_at = time.time()
        record.status = status
        return record

    def finish(
        self,
        task_id: str,
        status: TaskStatus,
        result: TaskResult | None = None,
        error: str | None = None,
    ) -> TaskRecord | None:
        """End a task once; returns None if it is unknown or already ended.

        Only a terminal status ends a task: anything else would count it out of the active
        tasks while it can still end again (and drive the count below zero).
        """
        if not status.is_terminal:
            raise ValueError(f"a task cannot finish as {status.value!r}: not a terminal status")
        record = self._records.get(task_id)
        if record is None or record.is_terminal:
            return None
        record.status = status
        record.result = result
        record.error = error
        record.finished_at = time.time()
        self._active_by_service[record.service] -= 1
        waiters = self._done.pop(task_id, None)
        if waiters is not None:
            for event in waiters:
                event.set()
        self._remember_finished(task_id)
        return record

    async def wait(self, task_id: str, timeout: float | None) -> TaskRecord | None:
        """Block until the task ends or `timeout` passes; returns its record either way.

        A `timeout` of 0 (or less) only passes a checkpoint (as a cancel scope that has already
        expired would); None waits until the end. The waiter sleeps on an event of its own:
        the end of the task sets it, and so does the shared timer at the deadline, with no
        cancel scope per wait. Whichever way it returns (or is cancelled), it leaves nothing
        behind.
        """
        if timeout is not None and math.isnan(timeout):  # would sit at the top of the timer's heap
            raise ValueError("a wait's timeout cannot be NaN")
        record = self._records.get(task_id)
        if record is not None and not record.is_terminal:
            if timeout is not None and timeout <= 0:
                await checkpoint()
                return self._records.get(task_id)
            # Created on demand: 10,000 waiting tasks nobody waits on cost no events.
            waiters = self._done.get(task_id)
            if waiters is None:
                waiters = self._done[task_id] = []
            loop = asyncio_loop()
            entry = None
            if loop is None:  # not on asyncio: a cancel scope keeps the deadline
                event: Any = anyio.Event()
            else:
                event = asyncio.Event()
                if timeout is not None and timeout != math.inf:
                    entry = self._wakeups.add(loop, loop.time() + timeout, event)
            waiters.append(event)
            try:
                if loop is None:
                    with anyio.move_on_after(timeout):
                        await event.wait()
                else:
                    await event.wait()
            finally:
                if entry is not None:
                    self._wakeups.withdraw(entry)
                if self._done.get(task_id) is waiters:  # the task has not ended: still listed
                    waiters.remove(event)
                    if not waiters:
                        del self._done[task_id]
        return self._records.get(task_id)

    def _remember_finished(self, task_id: str) -> None:
        self._finished_order[task_id] = None
        while len(self._finished_order) > self.retain_finished:
            old, _ = self._finished_order.popitem(last=False)
            self._records.pop(old, None)
