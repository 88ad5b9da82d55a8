"""Services whose task input is a JSON object of keyword arguments: workflows and components.

They share the `/run` endpoint (`{"kwargs": {...}}`, or the reference's `input`: the kwargs as a
JSON string), the rule for decoding a task's input, and how a NEW_TASK or a NEW_TOOL_CALL (plain
text from an agent becomes `{"input": text}`) turns into one `execute` call.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.requests import Request
from starlette.routing import BaseRoute

from gateway.messages import (
    ID_PATTERN,
    ActionTypes,
    NewTask,
    QueueMessage,
    TaskDefinition,
    TaskResult,
)
from gateway.web.routing import api_route
from gateway.web.sse import resume_after
from services.base import BaseService, RunQuery, RunResponse


def decode_run_input(text: str) -> dict[str, Any]:
    """A task's `input` here is a JSON object of keyword arguments (empty means none)."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"task input is not JSON: {exc.msg} at column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:  # over-long integers, absurd nesting
        raise ValueError(f"task input is not usable JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(
            f"task input must be a JSON object of run kwargs, got {type(value).__name__}"
        )
    return value


class KwargsRunRequest(BaseModel):
    """Body of `POST /run`: `kwargs`, or the reference's `input` (a JSON object string).

    Unknown keys are refused (422 naming them): `{"message": "hi"}` without the `kwargs`
    wrapper would otherwise run with no arguments and look like a success.
    """

    model_config = ConfigDict(extra="forbid")

    kwargs: dict[str, Any] | None = None
    input: str | None = Field(default=None, description="JSON-encoded run kwargs")
    session_id: str | None = None
    task_id: str | None = Field(
        default=None,
        pattern=ID_PATTERN,
        description="your id for the task; with stream=true, re-POST it with Last-Event-ID "
        "(or after) to resume its stream",
    )
    wait: float = Field(default=300.0, gt=0, le=3600, description="seconds to wait for the end")

    @model_validator(mode="after")
    def _one_form(self) -> KwargsRunRequest:
        if self.kwargs is not None and self.input is not None:
            raise ValueError("give either `kwargs` or `input`, not both")
        if self.input is not None:
            decode_run_input(self.input)
        return self

    def run_kwargs(self) -> dict[str, Any]:
        if self.input is not None:
            return decode_run_input(self.input)
        return self.kwargs or {}

    def sent(self) -> Any:
        """The input as the client gave it: the `input` text, or the kwargs object."""
        return self.input if self.input is not None else (self.kwargs or {})


class KwargsService(BaseService):
    """A service that runs `execute(task, state)` once per task of keyword inputs."""

    run_request: ClassVar[type[KwargsRunRequest]] = KwargsRunRequest
    # Every message is handled by spawning (tasks, tool calls) or by a quick hand-off (events,
    # cancels): delivered within `publish`, one event-loop hop fewer per task.
    inline_delivery: ClassVar[bool] = True
    run_summary: ClassVar[str] = "Run and wait for the result"

    def routes(self) -> list[BaseRoute]:
        return [
            api_route(  # first: Starlette tries a mount's routes in order
                "/run",
                self._run_http,
                methods=["POST"],
                body=self.run_request,
                query=RunQuery,
                response=RunResponse,
                responses={202: RunResponse},  # still running when `wait` ran out
                summary=self.run_summary,
                errors=(400, 404, 409, 415, 422, 503),
            ),
            *self.common_routes(),
        ]

    async def _run_http(self, request: Request, body: KwargsRunRequest, query: RunQuery) -> Any:
        extra = {"task_id": body.task_id} if body.task_id else {}
        task = TaskDefinition(
            input=json.dumps(body.run_kwargs()),
            session_id=body.session_id,
            agent_id=self.service_name,  # already its service's: submit need not copy it
            **extra,
        )
        after = resume_after(request, query.after) if query.stream else 0
        return await self.run_and_wait(
            task, body.wait, stream=query.stream, after=after, sent=body.sent()
        )

    async def process_message(self, message: QueueMessage) -> None:
        if message.action == ActionTypes.NEW_TASK:
            new_task = message.body_as(NewTask)
            self.take_task(new_task.task, new_task.state)
        elif message.action == ActionTypes.NEW_TOOL_CALL:
            task, tool_call = self.task_as_tool_call(message)
            try:
                decode_run_input(task.input)
            except ValueError:  # plain text from an agent
                task = task.model_copy(update={"input": json.dumps({"input": task.input})})
            self.spawn(task, lambda: self.execute(task, {}), tool_call=tool_call)
        else:
            await self.process_other(message)

    def take_task(self, task: TaskDefinition, state: dict[str, Any]) -> None:
        """Start a task's run (a NEW_TASK message, or a call from the control plane)."""
        self.spawn(task, lambda: self.execute(task, state))

    def task_taker(self) -> Callable[[TaskDefinition, dict[str, Any]], None] | None:
        # Only where the bus would deliver inline and NEW_TASK means exactly `take_task`: a
        # subclass that handles messages its own way gets its tasks as messages, as before.
        cls = type(self)
        if (
            cls.inline_delivery
            and cls.process_message is KwargsService.process_message
            and cls.handle_message is BaseService.handle_message
            and cls._handle_message is BaseService._handle_message
            and cls.as_consumer is BaseService.as_consumer
            and cls.register_to_message_queue is BaseService.register_to_message_queue
        ):
            return self.take_task
        return None

    async def process_other(self, message: QueueMessage) -> None:
        """Actions beyond tasks and tool calls; none by default."""
        raise ValueError(f"{self.service_name} does not handle {message.action!r}")

    @abstractmethod
    async def execute(self, task: TaskDefinition, state: dict[str, Any]) -> TaskResult:
        """Run once for `task` (its input decoded with `decode_run_input`)."""
