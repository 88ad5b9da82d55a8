"""HumanService: a queue of tasks answered by people over REST, or by an `fn_input` callable.

Waiting tasks live in one insertion-ordered dict: O(1) lookup and removal by id, pages in
arrival order, and no task, timer or limiter slot per waiting task, so 10,000 of them are cheap.
Every way a task can end (answer, fn_input, cancel, timeout, failure) goes through `_end`, which
removes the task before anything is awaited: a task ends exactly once, and a second answer is a
409, never a crash.

Size: the queue, its HTTP routes and its bus handler are one service; the models are small and
kept beside the routes that document them.
"""

from __future__ import annotations

import itertools
import logging
import string
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from gateway.contain import is_our_cancellation, user_code
from gateway.messages import (
    ID_PATTERN,
    ActionTypes,
    ChatMessage,
    HumanResponse,
    NewTask,
    QueueMessage,
    TaskDefinition,
    TaskEvent,
    TaskResult,
    TaskStatus,
    ToolCall,
    ToolCallBundle,
)
from gateway.web import cursor
from gateway.web.errors import ApiError
from gateway.web.paging import CursorPage, CursorQuery
from gateway.web.routing import api_route
from services.base import BaseService
from services.calling import call

logger = logging.getLogger("services.human.service")

DEFAULT_PROMPT = "Your help is needed. Please answer the request below.\n---\n{input_str}\n---\n"


def check_prompt_template(template: str) -> str:
    """A prompt template must place `{input_str}` and use no other variable (it is all we fill)."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"human_input_prompt is not a valid template: {exc}") from None
    names = {field.split(".")[0].split("[")[0] for _, field, _, _ in parsed if field is not None}
    if "input_str" not in names:
        raise ValueError(
            "human_input_prompt must contain {input_str} (where the request text goes), "
            f"got {template!r}"
        )
    others = sorted(names - {"input_str"})
    if others:
        shown = ", ".join("{" + name + "}" for name in others)
        raise ValueError(f"human_input_prompt may only use {{input_str}}, found {shown}")
    return template


@dataclass(slots=True)
class HumanTask:
    """One request for a person. `caller` is set when it came as a tool call (reply there)."""

    task_id: str
    input: str
    session_id: str | None
    created_at: float
    arrival: int = 0  # 1, 2, ... per service: the queue's order, and its paging cursor
    expires_at: float | None = None
    caller: str | None = None
    requested_by: dict[str, Any] | None = None
    status: TaskStatus = TaskStatus.WAITING_FOR_HUMAN
    result: str | None = None
    error: str | None = None
    finished_at: float | None = None


# -- HTTP models ---------------------------------------------------------------------------------
class HumanTaskCreate(BaseModel):
    """Body of `POST /tasks`: the reference's TaskDefinition (`agent_id` is this service)."""

    model_config = ConfigDict(extra="forbid")

    input: str = Field(default="", description="what the person is asked")
    task_id: str | None = Field(default=None, pattern=ID_PATTERN)
    session_id: str | None = Field(default=None, max_length=128)
    agent_id: str | None = Field(default=None, description="ignored: the task is this service's")


class HumanTaskInfo(BaseModel):
    """A human task: the TaskDefinition fields plus what a person needs to answer it."""

    task_id: str
    input: str
    session_id: str | None = None
    service: str = Field(description="this human service")
    prompt: str = Field(description="the input inside the service's human_input_prompt")
    status: TaskStatus
    created_at: float
    tool_call: bool = Field(description="asked by another service; the answer goes back to it")
    requested_by: dict[str, Any] | None = None
    result: str | None = None
    error: str | None = None


# How the aggregate event stream names the end of a human task.
_ENDED_AS = {
    TaskStatus.COMPLETED: "answered",
    TaskStatus.CANCELLED: "withdrawn",
    TaskStatus.TIMED_OUT: "timed_out",
}


class HumanTaskPage(CursorPage[HumanTaskInfo]):
    """A page of waiting human tasks."""


class HumanService(BaseService):
    """Tasks answered by people (`POST /tasks/{id}/handle`) or by `fn_input(prompt, task_id)`."""

    service_type = "human"

    description: str = "A queue of tasks answered by people."
    fn_input: Callable[..., Any] | None = Field(
        default=None, description="answers instead of REST: (prompt, task_id) -> str"
    )
    human_input_prompt: str = DEFAULT_PROMPT
    # Human tasks wait long and cost little: allow many more queued than the default.
    max_queued_tasks: int = Field(default=100_000, ge=1)
    retain_answered: int = Field(default=1000, ge=0, description="ended tasks kept for GET")

    _waiting: dict[str, HumanTask] = PrivateAttr(default_factory=dict)
    _arrivals: Iterator[int] = PrivateAttr(default_factory=lambda: itertools.count(1))
    _ended: OrderedDict[str, HumanTask] = PrivateAttr(default_factory=OrderedDict)
    _asking: dict[str, anyio.CancelScope] = PrivateAttr(default_factory=dict)
    _wakeup: anyio.Event | None = PrivateAttr(default=None)

    @field_validator("human_input_prompt")
    @classmethod
    def _valid_prompt(cls, value: str) -> str:
        return check_prompt_template(value)

    # -- routes ---------------------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        tags = ("Human tasks",)
        return [
            *self.common_routes(),
            api_route(
                "/tasks",
                self._create_http,
                methods=["POST"],
                body=HumanTaskCreate,
                response=HumanTaskInfo,
                status_code=201,
                summary="Ask a person (the task is tracked by the control plane)",
                errors=(404, 409, 422, 503),
                tags=tags,
                name="create_task",
            ),
            api_route(
                "/tasks",
                self._list_http,
                query=CursorQuery,
                response=HumanTaskPage,
                summary="Waiting tasks, newest first unless `order=asc`, paged",
                errors=(422,),
                tags=tags,
                name="get_tasks",
            ),
            api_route(
                "/tasks/{task_id}",
                self._get_http,
                response=HumanTaskInfo,
                summary="One task: waiting, or how it ended",
                errors=(404,),
                tags=tags,
                name="get_task",
            ),
            api_route(
                "/tasks/{task_id}/handle",
                self._handle_http,
                methods=["POST"],
                body=HumanResponse,
                response=HumanTaskInfo,
                summary="Answer a waiting task",
                errors=(404, 409, 422),
                tags=tags,
                name="handle_task",
            ),
        ]

    async def home(self) -> dict[str, Any]:
        info = await super().home()
        info.update(
            num_outstanding_calls=len(self._waiting),
            num_tasks=len(self._waiting),
            answered_by="fn_input" if self.fn_input is not None else "rest",
            human_input_prompt=self.human_input_prompt,
        )
        return info

    async def _create_http(self, request: Request, body: HumanTaskCreate) -> Response:
        extra = {"task_id": body.task_id} if body.task_id else {}
        task_def = TaskDefinition(
            input=body.input, session_id=body.session_id, agent_id=self.service_name, **extra
        )
        if self._known(task_def.task_id):
            raise ApiError(409, f"task {task_def.task_id!r} already exists in {self.service_name}")
        task = self._accept(task_def, announce=False)
        assert task is not None
        try:
            await self.service_host.control_plane.submit(task_def, self.service_name)
        except BaseException:
            self._waiting.pop(task.task_id, None)
            raise
        self._announce(task, "created")
        await self.report_status(task.task_id, TaskStatus.WAITING_FOR_HUMAN)
        self._start_fn_input(task)
        return JSONResponse(self.info(task).model_dump(mode="json"), status_code=201)

    async def _list_http(self, request: Request, query: CursorQuery) -> HumanTaskPage:
        # Arrival order is `created_at` order, so a page is a slice from either end: no copy
        # or sort of 10,000 waiting tasks per request. The cursor is the arrival number of the
        # last task shown: answered tasks leave, the rest keep their place, none is skipped.
        tasks = self._waiting.values()
        ordered = reversed(tasks) if query.descending else iter(tasks)
        if query.after is not None:
            mark, _ = cursor.decode(query.after)
            if not isinstance(mark, int):
                raise ApiError(422, "`after` belongs to another list; start again without it")
            if query.descending:
                ordered = itertools.dropwhile(lambda task: task.arrival >= mark, ordered)
            else:
                ordered = itertools.dropwhile(lambda task: task.arrival <= mark, ordered)
        end = query.offset + query.limit
        window = list(itertools.islice(ordered, query.offset, end + 1))
        page = window[: query.limit]
        following = None
        if len(window) > query.limit:
            following = cursor.encode(page[-1].arrival, page[-1].task_id)
        return HumanTaskPage(
            items=[self.info(task) for task in page], total=len(self._waiting), next=following
        )

    async def _get_http(self, request: Request) -> HumanTaskInfo:
        task_id = request.path_params["task_id"]
        task = self._waiting.get(task_id) or self._ended.get(task_id)
        if task is None:
            raise ApiError(404, f"no task {task_id!r} in {self.service_name}")
        return self.info(task)

    async def _handle_http(self, request: Request, body: HumanResponse) -> HumanTaskInfo:
        task_id = request.path_params["task_id"]
        waiting = self._waiting.get(task_id)
        if waiting is not None and self._overtaken(waiting):
            # A cancel got there first (of this task, or of the run that asked): it wins.
            await self._end(task_id, TaskStatus.CANCELLED, error="withdrawn: cancelled first")
        task = await self._end(task_id, TaskStatus.COMPLETED, result=body.result)
        if task is not None:
            if self._overtaken(task):  # cancelled while the answer was being reported
                task.status, task.error = TaskStatus.CANCELLED, "withdrawn: cancelled first"
                raise ApiError(409, f"task {task_id!r} was cancelled before the answer arrived")
            return self.info(task)
        ended = self._ended.get(task_id)
        if ended is not None:
            raise ApiError(409, f"task {task_id!r} already ended as {ended.status.value}")
        raise ApiError(404, f"no task {task_id!r} waits in {self.service_name}")

    def _overtaken(self, task: HumanTask) -> bool:
        """Whether the control plane already ended this task, or the task that asked it, other
        than by this answer (a cancel): the one decision both racing requests consult."""
        tasks = self.service_host.control_plane.tasks
        asker = (task.requested_by or {}).get("task_id")
        for task_id in (task.task_id, asker):
            record = tasks.get(task_id) if isinstance(task_id, str) else None
            if (
                record is not None
                and record.is_terminal
                and record.status is not TaskStatus.COMPLETED
            ):
                return True
        return False

    def info(self, task: HumanTask) -> HumanTaskInfo:
        return HumanTaskInfo(
            task_id=task.task_id,
            input=task.input,
            session_id=task.session_id,
            service=self.service_name,
            prompt=self.prompt_for(task.input),
            status=task.status,
            created_at=task.created_at,
            tool_call=task.caller is not None,
            requested_by=task.requested_by,
            result=task.result,
            error=task.error,
        )

    def prompt_for(self, text: str) -> str:
        return self.human_input_prompt.format(input_str=text)

    # -- bus ------------------------------------------------------------------------------------
    async def handle_message(self, message: QueueMessage) -> None:
        if message.action == ActionTypes.CANCEL_TASK:
            task_id = str(message.data.get("task_id"))
            if await self._end(task_id, TaskStatus.CANCELLED, error="cancelled") is not None:
                return
        await super().handle_message(message)

    async def process_message(self, message: QueueMessage) -> None:
        if message.action == ActionTypes.NEW_TASK:
            task = self._accept(message.body_as(NewTask).task)
            if task is None:
                return  # created over REST already, or delivered twice
            await self.report_status(task.task_id, TaskStatus.WAITING_FOR_HUMAN)
        elif message.action == ActionTypes.NEW_TOOL_CALL:
            task_def, tool_call = self.task_as_tool_call(message)
            requested_by = message.data.get("requested_by")
            task = self._accept(
                task_def,
                caller=tool_call.source_id,
                requested_by=requested_by if isinstance(requested_by, dict) else None,
            )
            if task is None:
                return
        else:
            raise ValueError(f"{self.service_name} does not handle {message.action!r}")
        self._start_fn_input(task)

    # -- the queue ------------------------------------------------------------------------------
    def _known(self, task_id: str) -> bool:
        return task_id in self._waiting or task_id in self._ended

    def _accept(
        self,
        task_def: TaskDefinition,
        caller: str | None = None,
        requested_by: dict[str, Any] | None = None,
        announce: bool = True,
    ) -> HumanTask | None:
        """Queue a task; None if this id is already waiting or ended (a repeated delivery)."""
        if self._known(task_def.task_id):
            return None
        task = HumanTask(
            task_id=task_def.task_id,
            input=task_def.input,
            session_id=task_def.session_id,
            created_at=time.time(),
            arrival=next(self._arrivals),
            caller=caller,
            requested_by=requested_by,
        )
        if self.timeout is not None:
            task.expires_at = anyio.current_time() + self.timeout
            if self._wakeup is not None:
                self._wakeup.set()
        self._waiting[task.task_id] = task
        if announce:
            self._announce(task, "created")
        return task

    def _announce(self, task: HumanTask, name: str) -> None:
        """Tell the gateway's aggregate event stream (live inboxes) that the queue changed."""
        if self._host is None:
            return
        self._host.control_plane.events.publish_feed(
            TaskEvent(
                task_id=task.task_id,
                kind="human",
                name=name,
                status=task.status,
                data={
                    "service": self.service_name,
                    "session_id": task.session_id,
                    "tool_call": task.caller is not None,
                },
            )
        )

    async def _end(
        self,
        task_id: str,
        status: TaskStatus,
        *,
        result: str | None = None,
        error: str | None = None,
    ) -> HumanTask | None:
        """End a waiting task once and report it; None if it is not waiting (any more)."""
        task = self._waiting.pop(task_id, None)
        if task is None:
            return None
        scope = self._asking.pop(task_id, None)
        if scope is not None:
            scope.cancel()
        task.status, task.result, task.error = status, result, error
        task.finished_at = time.time()
        self._announce(task, _ENDED_AS.get(status, status.value))
        if self.retain_answered:
            self._ended[task_id] = task
            while len(self._ended) > self.retain_answered:
                self._ended.popitem(last=False)
        with anyio.move_on_after(2, shield=True):
            try:
                await self._report(task)
            except Exception:
                logger.exception("could not report the end of human task %s", task_id)
        return task

    async def _report(self, task: HumanTask) -> None:
        """To the tool-call caller (COMPLETED_TOOL_CALL) or the control plane (COMPLETED_TASK)."""
        ok = task.status is TaskStatus.COMPLETED
        if task.caller is not None:
            tool_call = ToolCall(
                id_=task.task_id,
                source_id=task.caller,
                tool_call_bundle=ToolCallBundle(
                    tool_name=self.tool_name, tool_kwargs={"input": task.input}
                ),
            )
            text = (task.result or "") if ok else (task.error or task.status.value)
            await self.answer_tool_call(tool_call, text, is_error=not ok)
            return
        history = []
        if ok:
            history = [
                ChatMessage(role="assistant", content=self.prompt_for(task.input)),
                ChatMessage(role="user", content=task.result),
            ]
        await self.finish_task(
            TaskResult(
                task_id=task.task_id,
                history=history,
                result=task.result or "",
                status=task.status,
                error=task.error,
            )
        )

    # -- fn_input -------------------------------------------------------------------------------
    def _start_fn_input(self, task: HumanTask) -> None:
        if self.fn_input is None or task.task_id not in self._waiting:
            return
        scope = anyio.CancelScope()
        self._asking[task.task_id] = scope
        self.service_host.task_group.start_soon(
            self._ask_fn_input, task, scope, name=f"{self.service_name}:{task.task_id}"
        )

    async def _ask_fn_input(self, task: HumanTask, scope: anyio.CancelScope) -> None:
        """Await fn_input; whoever ends the task first (answer, cancel, timeout) wins."""
        answer: str | None = None
        failure: BaseException | None = None
        with scope:
            try:
                await self._wait_until_running()
                assert self._limiter is not None
                async with self._limiter:
                    with user_code():
                        prompt = self.prompt_for(task.input)
                        answer = await self._call_fn_input(prompt, task.task_id)
            except BaseException as exc:
                if is_our_cancellation(exc, scope):
                    raise
                failure = exc  # whatever fn_input raised (even SystemExit) fails this task only
        if failure is not None:
            error = self.failure(task.task_id, failure).error
            await self._end(task.task_id, TaskStatus.FAILED, error=error)
        elif answer is not None:
            await self._end(task.task_id, TaskStatus.COMPLETED, result=answer)

    async def _call_fn_input(self, prompt: str, task_id: str) -> str:
        assert self.fn_input is not None
        value = await call(self.fn_input, prompt, task_id)
        return value if isinstance(value, str) else str(value)

    # -- timeouts -------------------------------------------------------------------------------
    async def on_start(self) -> None:
        if self.timeout is not None:
            self.service_host.task_group.start_soon(
                self._expire, name=f"{self.service_name}:expiry"
            )

    async def _expire(self) -> None:
        """One sleeper for all deadlines: tasks share one timeout, so the oldest expires first."""
        while True:
            oldest = next(iter(self._waiting.values()), None)
            if oldest is None:
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
                self._wakeup = None
                continue
            assert oldest.expires_at is not None
            delay = oldest.expires_at - anyio.current_time()
            if delay > 0:
                await anyio.sleep(delay)
                continue
            await self._end(
                oldest.task_id,
                TaskStatus.TIMED_OUT,
                error=f"no answer within {self.timeout}s",
            )
