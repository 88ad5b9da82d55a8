"""What the sync and async clients share and that does no I/O: typed errors, typed events, an
incremental Server-Sent Events parser, the retry back-off rule and reading a task's outcome.

Keeping this free of I/O is what lets `gateway.client` offer a blocking and an async client
with the same behaviour without writing the decisions twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

TERMINAL = frozenset({"completed", "failed", "cancelled", "timed_out"})


# -- errors --------------------------------------------------------------------------------------
class GatewayError(Exception):
    """An error answer of the gateway: HTTP `status`, its `error` code and readable `detail`."""

    def __init__(self, status: int, error: str, detail: Any) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail


class Unreachable(GatewayError):
    """No gateway answered at the URL (refused, unresolvable, reset before an answer)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(0, "unreachable", f"cannot reach the gateway at {url}: {reason}")
        self.url = url

    def __str__(self) -> str:
        return str(self.detail)


class Unauthorized(GatewayError):
    """401: no token, or a wrong one."""


class NotFound(GatewayError):
    """404: no such task, session, service or human task."""


class Conflict(GatewayError):
    """409: e.g. cancelling a task that already ended, answering a question twice."""


class Overloaded(GatewayError):
    """503 after the bounded retries: the gateway asked to come back in `retry_after` seconds."""

    def __init__(self, status: int, error: str, detail: Any, retry_after: float | None) -> None:
        super().__init__(status, error, detail)
        self.retry_after = retry_after


class TaskFailed(Exception):
    """The task ended without a result; `error` is the task's own error text."""

    status = "failed"

    def __init__(self, task_id: str, error: str | None, record: dict[str, Any]) -> None:
        super().__init__(f"task {task_id} {self.status}: {error or 'no error text'}")
        self.task_id = task_id
        self.error = error
        self.record = record


class TaskCancelled(TaskFailed):
    status = "cancelled"


class TaskTimedOut(TaskFailed):
    status = "timed_out"


_BY_STATUS: dict[int, type[GatewayError]] = {401: Unauthorized, 404: NotFound, 409: Conflict}
_TASK_ERRORS = {"failed": TaskFailed, "cancelled": TaskCancelled, "timed_out": TaskTimedOut}


def retry_after(response: httpx.Response) -> float | None:
    """The Retry-After header in seconds (the gateway sends a number), or None."""
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def error_for(response: httpx.Response) -> GatewayError:
    """The typed error for an error response (its body must have been read)."""
    try:
        body = response.json()
        error, detail = str(body.get("error", "error")), body.get("detail")
    except (ValueError, AttributeError):
        error, detail = "error", response.text or response.reason_phrase
    status = response.status_code
    if status == 503:
        return Overloaded(status, error, detail, retry_after(response))
    return _BY_STATUS.get(status, GatewayError)(status, error, detail)


def checked(response: httpx.Response) -> Any:
    """The JSON body of a successful response; raises the typed error otherwise."""
    if response.status_code >= 400:
        raise error_for(response)
    return response.json() if response.content else None


def backoff(attempt: int, response: httpx.Response | None, cap: float) -> float:
    """Seconds before retry `attempt` (0-based): the server's Retry-After, at least an
    exponential floor, never more than `cap`."""
    floor = 0.1 * (2**attempt)
    asked = retry_after(response) if response is not None else None
    return min(cap, max(floor, asked or 0.0))


# -- task outcome --------------------------------------------------------------------------------
def result_value(record: dict[str, Any]) -> Any:
    """What a completed task produced; raises TaskFailed (or a subclass) for other endings.

    The output of every service type is the task's `result` (README, "API conventions").
    """
    status = record.get("status")
    if status != "completed":
        raise _TASK_ERRORS.get(str(status), TaskFailed)(
            str(record.get("task_id")), record.get("error"), record
        )
    return record.get("result")


# -- events --------------------------------------------------------------------------------------
class TaskEvent(BaseModel):
    """One event of a task's stream. `id` is the stream's SSE id (a per-task sequence number)."""

    model_config = ConfigDict(extra="allow")

    id: int | str | None = None
    kind: str = "event"
    task_id: str = ""
    name: str = ""
    data: dict[str, Any] = Field(default_factory=dict)
    status: str | None = None
    at: float | None = None


class StatusEvent(TaskEvent):
    """The task's status changed (`status`)."""


class WorkflowEvent(TaskEvent):
    """An event a workflow or agent wrote to its stream (`name` is its class, `data` its fields)."""

    @property
    def tool_call(self) -> dict[str, Any] | None:
        """The call's name and arguments when this is a tool call starting."""
        if self.name == "ToolCall":
            return {"tool": self.data.get("tool_name"), "kwargs": self.data.get("tool_kwargs")}
        return None

    @property
    def tool_result(self) -> dict[str, Any] | None:
        if self.name == "ToolCallResult":
            return {
                "tool": self.data.get("tool_name"),
                "output": self.data.get("output"),
                "is_error": bool(self.data.get("is_error")),
            }
        return None


class ResultEvent(TaskEvent):
    """The last event: how the task ended. `record` has `status`, `result` and `error`."""

    @property
    def record(self) -> dict[str, Any]:
        return {"task_id": self.task_id, **self.data}


class ErrorEvent(TaskEvent):
    """The stream (not the task) had a problem, e.g. this reader fell behind and was dropped."""


class GapEvent(TaskEvent):
    """Events this reader asked for are no longer held: `data` says from where and how many."""


EVENT_TYPES: dict[str, type[TaskEvent]] = {
    "status": StatusEvent,
    "event": WorkflowEvent,
    "result": ResultEvent,
    "error": ErrorEvent,
    "gap": GapEvent,
}


def make_event(kind: str | None, data: str, event_id: str | None) -> TaskEvent | None:
    """A typed event from one SSE message; None for a message that is not a JSON object."""
    try:
        payload = json.loads(data)
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    kind = str(payload.get("kind") or kind or "event")
    payload["kind"] = kind
    if event_id is not None:
        payload["id"] = int(event_id) if event_id.isdigit() else event_id
    return EVENT_TYPES.get(kind, TaskEvent).model_validate(payload)


class SSEParser:
    """Feeds lines of a `text/event-stream`, yields typed events at each blank line."""

    def __init__(self) -> None:
        self._kind: str | None = None
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, lines: Iterable[str]) -> Iterator[TaskEvent]:
        for line in lines:
            event = self.line(line)
            if event is not None:
                yield event

    def line(self, line: str) -> TaskEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):  # a comment (keep-alive)
            return None
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            self._kind = value
        elif field == "data":
            self._data.append(value)
        elif field == "id" and "\0" not in value:
            self._id = value
        return None

    def _dispatch(self) -> TaskEvent | None:
        kind, data, self._kind, self._data = self._kind, self._data, None, []
        if not data:
            return None
        return make_event(kind, "\n".join(data), self._id)


class StreamCursor:
    """Where a reader is in a task's stream, so a reconnect neither loses nor repeats events.

    With SSE ids the gateway resumes after `Last-Event-ID` and anything at or before it is
    dropped; without ids (an older gateway) the replay is skipped by count.
    """

    def __init__(self, after: int | str | None = None) -> None:
        if isinstance(after, str) and after.isdigit():
            after = int(after)
        self.last_id: int | str | None = after
        self.seen = 0
        self.finished = False
        self._skip = 0

    def headers(self) -> dict[str, str]:
        return {"Last-Event-ID": str(self.last_id)} if self.last_id is not None else {}

    def reconnecting(self) -> None:
        self._skip = self.seen if self.last_id is None else 0

    def admit(self, event: TaskEvent) -> bool:
        """Whether to hand this event to the reader (False for a repeat)."""
        if event.id is None:
            if self._skip:
                self._skip -= 1
                return False
        else:
            if _before_or_at(event.id, self.last_id):
                return False
            self.last_id = event.id
        self.seen += 1
        if event.kind == "result":
            self.finished = True
        return True


def _before_or_at(event_id: int | str, last: int | str | None) -> bool:
    if last is None:
        return False
    if isinstance(event_id, int) and isinstance(last, int):
        return event_id <= last
    return event_id == last
