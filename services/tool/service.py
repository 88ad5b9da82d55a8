"""ToolService: a list of llama-index tools that other services call over the bus or HTTP.

Every `NEW_TOOL_CALL` runs bounded by a CapacityLimiter (`max_concurrent_calls`) and always
answers its caller (`source_id`) with a `COMPLETED_TOOL_CALL`: an unknown tool, bad arguments or a
raising tool give an error ToolCallResult, never silence. A call from another process (or given
as JSON) goes to a pool worker in the host's task group; a call handed over as an object by a
caller in this process (a MetaServiceTool) runs in the caller's own task, within its publish,
because that caller only waits for the answer anyway (`_run_in_delivery`).

`POST /run` calls a tool directly and answers its output; there, requests it cannot serve are
HTTP errors (404 unknown tool, 422 bad arguments); a tool that raises or times out answers 200
with `is_error` and the error text.

Size: the service class and the request/response models of its routes; tool adaptation lives in
`adapt`, the worker pool in `pool`.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
from llama_index.core.tools import AsyncBaseTool, BaseTool, ToolOutput
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute

from gateway.bus import DECLINED, BusError, Consumer
from gateway.bus.memory import MessageBus
from gateway.contain import describe, enter_user_code, is_our_cancellation, user_code
from gateway.jsonable import to_jsonable
from gateway.messages import (
    ActionTypes,
    NewTask,
    QueueMessage,
    TaskDefinition,
    TaskResult,
    TaskStatus,
    ToolCall,
    ToolCallBundle,
    ToolCallResult,
)
from gateway.web.errors import ApiError
from gateway.web.routing import api_route
from services.base import BaseService
from services.tool.adapt import (
    ArgumentCheck,
    BadArguments,
    ToolError,
    ToolInfo,
    ToolTimeout,
    UnknownTool,
    _SyncToolAdapter,
    as_async_tool,
)
from services.tool.meta_tool import Reply
from services.tool.pool import WorkerPool

logger = logging.getLogger("services.tool.service")

RETAINED_HTTP_RESULTS = 1024
REPLY_TIMEOUT = 10.0  # a caller whose inbox stays full this long is not listening


# -- errors ---------------------------------------------------------------------------------------
@dataclass
class _Calls:
    """A tool service's call bookkeeping as one plain object.

    A private attribute is read through a `__getattr__` after a failed lookup and the call path
    touches these a dozen times per call, so they live here rather than as separate
    PrivateAttrs, and the service reads this object through a property.
    """

    by_name: dict[str, AsyncBaseTool] = field(default_factory=dict)
    checks: dict[str, ArgumentCheck] = field(default_factory=dict)
    outstanding: dict[str, ToolCall] = field(default_factory=dict)
    http_done: dict[str, anyio.Event] = field(default_factory=dict)
    http_results: OrderedDict[str, ToolCallResult] = field(default_factory=OrderedDict)
    limiter: anyio.CapacityLimiter | None = None
    pool: WorkerPool | None = None
    bus: MessageBus | None = None
    publisher_id: str = ""
    # our consumer is delivered to within the publisher's task (the in-memory bus's inline path)
    inline: bool = False
    # tools run in a thread anyio cannot abandon: never in a caller's task (see _run_in_delivery)
    threaded: frozenset[str] = frozenset()
    # trace context of calls waiting for a worker (only filled when tracing is on)
    traces: dict[str, dict[str, str]] = field(default_factory=dict)


class _AnswerHere:
    """Where a call taken as is (`ToolService._take_directly`) leaves its answer: the part of a
    delivered message that its receiver answers on (`wants_answer_here`, `answer_here`)."""

    __slots__ = ("answer",)
    trace = None  # calls go as messages when tracing is on (MessageBus.call_direct)

    def __init__(self) -> None:
        self.answer: Reply | None = None

    def wants_answer_here(self) -> bool:
        return True

    def answer_here(self, answer: Reply) -> None:
        self.answer = answer


# Where a call handed over in this process is answered: the message it came in, or that part of one.
AnswerPlace = QueueMessage | _AnswerHere


# -- HTTP models ----------------------------------------------------------------------------------
class ToolServiceInfo(BaseModel):
    service_name: str
    description: str
    type: str
    running: bool
    num_outstanding_calls: int
    num_tools: int
    tools: list[ToolInfo]
    num_outstanding_tool_calls: int
    tool_calls: list[ToolCall]
    max_concurrent_calls: int


class ToolQuery(BaseModel):
    name: str = Field(min_length=1, max_length=256)


class ToolMetadataResponse(BaseModel):
    """`GET /tool?name=` (the reference's shape: the metadata under `tool_metadata`)."""

    tool_metadata: ToolInfo


class ToolCallAccepted(BaseModel):
    tool_call_id: str


class ToolCallQuery(BaseModel):
    wait: float = Field(default=0.0, ge=0, le=3600, description="seconds to wait for the end")


class ToolCallPending(BaseModel):
    tool_call_id: str
    status: TaskStatus = TaskStatus.RUNNING


class ToolRunRequest(BaseModel):
    """`{"tool": name, "kwargs": {...}}`, or the task form `{"input": "<that as JSON>"}`."""

    model_config = ConfigDict(extra="forbid")

    tool: str | None = Field(default=None, min_length=1, max_length=256)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    args: list[Any] = Field(default_factory=list)
    input: str | None = Field(default=None, description='JSON: {"tool": ..., "kwargs": {...}}')
    wait: float = Field(default=300.0, gt=0, le=3600, description="seconds to wait for the end")

    def bundle(self) -> ToolCallBundle:
        if self.input is not None:
            return bundle_from_input(self.input)
        if self.tool is None:
            raise ApiError(422, "give `tool` (and `kwargs`), or `input`")
        return ToolCallBundle(tool_name=self.tool, tool_args=self.args, tool_kwargs=self.kwargs)


class ToolRunResponse(BaseModel):
    tool: str
    output: str
    raw_output: Any = None
    is_error: bool = False


def bundle_from_input(text: str) -> ToolCallBundle:
    """A task's `input` for a tool service: `{"tool": name, "kwargs": {...}}` as JSON."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadArguments(f"task input is not JSON: {exc.msg} at column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:  # over-long integers, absurd nesting
        raise BadArguments(f"task input is not usable JSON: {exc}") from None
    if not isinstance(value, dict) or not isinstance(value.get("tool"), str):
        raise BadArguments('task input must be a JSON object {"tool": name, "kwargs": {...}}')
    kwargs = value.get("kwargs") or {}
    args = value.get("args") or []
    if not isinstance(kwargs, dict) or not isinstance(args, list):
        raise BadArguments("`kwargs` must be an object and `args` a list")
    return ToolCallBundle(tool_name=value["tool"], tool_args=args, tool_kwargs=kwargs)


# -- the service ----------------------------------------------------------------------------------
class ToolService(BaseService):
    """Serves a list of tools; each call runs concurrently and always answers its caller."""

    service_type = "tool"

    tools: list[Any] = Field(default_factory=list)
    description: str = "A service that runs tools for other services."
    max_concurrent_calls: int = Field(default=32, ge=1)

    _call_state: _Calls = PrivateAttr(default_factory=lambda: _Calls())

    @field_validator("tools", mode="before")
    @classmethod
    def _as_tools(cls, value: Any) -> list[AsyncBaseTool]:
        if value is None:
            return []
        if isinstance(value, (BaseTool, AsyncBaseTool)) or not isinstance(value, (list, tuple)):
            value = [value]
        tools = [as_async_tool(t) for t in value]
        names = [t.metadata.get_name() for t in tools]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"two tools share the name(s): {', '.join(duplicates)}")
        return tools

    def model_post_init(self, context: Any) -> None:
        calls = self._calls
        calls.by_name = {t.metadata.get_name(): t for t in self.tools}
        calls.checks = {name: ArgumentCheck(tool) for name, tool in calls.by_name.items()}
        calls.threaded = frozenset(
            name for name, tool in calls.by_name.items() if isinstance(tool, _SyncToolAdapter)
        )

    @property
    def _calls(self) -> _Calls:
        # A property reading the dict: cheaper than the general private read
        # (services.private_reads), and read several times per call.
        return self.__pydantic_private__["_call_state"]

    @property
    def tool_names(self) -> list[str]:
        return list(self._calls.by_name)

    async def on_start(self) -> None:
        calls = self._calls
        calls.limiter = anyio.CapacityLimiter(self.max_concurrent_calls)
        calls.pool = WorkerPool(
            self.max_concurrent_calls,
            self.max_queued_tasks,
            self._run_call,
            self.service_host.task_group,
            f"{self.service_name}:tool-worker",
            abandon=self._abandon_call,
        )
        calls.bus = self.bus
        calls.publisher_id = self.publisher_id

    # -- HTTP -----------------------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        return [
            *self.common_routes(),
            api_route(
                "/tool_call",
                self._create_tool_call,
                methods=["POST"],
                body=ToolCall,
                response=ToolCallAccepted,
                status_code=202,
                summary="Start a tool call; the result goes to `source_id` (or GET it by id)",
                errors=(409, 422),
            ),
            api_route(
                "/tool_call/{tool_call_id}",
                self._get_tool_call,
                query=ToolCallQuery,
                response=ToolCallResult,
                summary="The result of a tool call started over HTTP (202 while it runs)",
                errors=(404,),
            ),
            api_route(
                "/tool",
                self._get_tool,
                query=ToolQuery,
                response=ToolMetadataResponse,
                summary="One tool's metadata",
                errors=(404, 422),
            ),
            api_route(
                "/run",
                self._run_http,
                methods=["POST"],
                body=ToolRunRequest,
                response=ToolRunResponse,
                summary="Call a tool and wait for its output",
                errors=(404, 422),
            ),
        ]

    async def home(self) -> dict[str, Any]:
        base = await super().home()
        return ToolServiceInfo(
            **base,
            num_tools=len(self.tools),
            tools=[ToolInfo.of(t) for t in self.tools],
            num_outstanding_tool_calls=len(self._calls.outstanding),
            tool_calls=list(self._calls.outstanding.values()),
            max_concurrent_calls=self.max_concurrent_calls,
        ).model_dump(mode="json")

    async def _get_tool(self, request: Request, query: ToolQuery) -> ToolMetadataResponse:
        """One tool's metadata, 404 if there is no such tool."""
        tool = self._calls.by_name.get(query.name)
        if tool is None:
            raise ApiError(404, self._unknown(query.name))
        return ToolMetadataResponse(tool_metadata=ToolInfo.of(tool))

    async def _create_tool_call(self, request: Request, body: ToolCall) -> ToolCallAccepted:
        """Start a tool call; a call without `source_id` keeps its result for GET."""
        if body.id_ in self._calls.outstanding or body.id_ in self._calls.http_results:
            raise ApiError(409, f"a tool call with id {body.id_!r} already exists")
        self._calls.http_done[body.id_] = anyio.Event()
        await self.submit_call(body)
        return ToolCallAccepted(tool_call_id=body.id_)

    async def _get_tool_call(self, request: Request, query: ToolCallQuery) -> Any:
        """The kept result of an HTTP-started tool call."""
        call_id = request.path_params["tool_call_id"]
        done = self._calls.http_done.get(call_id)
        if done is not None:
            with anyio.move_on_after(query.wait):
                await done.wait()
        result = self._calls.http_results.get(call_id)
        if result is not None:
            return result
        if call_id in self._calls.http_done:
            return JSONResponse(ToolCallPending(tool_call_id=call_id).model_dump(), 202)
        raise ApiError(404, f"no tool call {call_id!r} started over HTTP")

    async def _run_http(self, request: Request, body: ToolRunRequest) -> ToolRunResponse:
        """Call a tool now and answer its output.

        A request the service cannot serve is an HTTP error (404 unknown tool, 422 bad
        arguments); a tool that raises or overruns `wait` is the tool's failure, not the
        gateway's: 200 with `is_error` and the error text, like a ToolCallResult.
        """
        try:  # a request that names no tool (or a malformed one) is a 4xx, not a tool failure
            bundle = body.bundle()
        except (UnknownTool, BadArguments) as exc:
            raise ApiError(exc.status, str(exc), code=exc.code) from None
        try:
            with anyio.fail_after(body.wait), user_code():
                output = await self.run_tool(bundle)
        except (UnknownTool, BadArguments) as exc:
            raise ApiError(exc.status, str(exc), code=exc.code) from None
        except TimeoutError:
            output_text = f"no output within {body.wait}s"
            return ToolRunResponse(tool=bundle.tool_name, output=output_text, is_error=True)
        except BaseException as exc:
            if is_our_cancellation(exc):  # the client went away, or shutdown
                raise
            return ToolRunResponse(tool=bundle.tool_name, output=describe(exc), is_error=True)
        return ToolRunResponse(
            tool=bundle.tool_name,
            output=output.content,
            raw_output=None if output.is_error else to_jsonable(output.raw_output),
            is_error=bool(output.is_error),
        )

    # -- bus --------------------------------------------------------------------------------------
    def as_consumer(self, remote: bool = False) -> Consumer:
        """Inline: handling a message feeds the bounded worker queue, spawns a task, or runs a
        call whose caller waits for it anyway (`_deliver`)."""
        consumer = super().as_consumer(remote)
        if not remote:
            consumer.inline = True
            consumer.handler = self._deliver
            consumer.direct = self._take_directly
        return consumer

    async def _take_directly(self, body: Any) -> Any:
        """The bus's envelope-free way in (`MessageBus.call_direct`): a ToolCall from this
        process runs as `_deliver` runs one handed over on a message, and its answer (a Reply)
        is returned; anything `_deliver` would hand to `handle_message` is DECLINED."""
        if not isinstance(body, ToolCall) or not self._runs_in_caller(body):
            return DECLINED
        here = _AnswerHere()
        self._calls.outstanding[body.id_] = body
        # `_run_in_delivery` inlined, one await less: its trace branch never applies here
        # (with tracing on, MessageBus.call_direct declines and the call goes as a message).
        with user_code():
            await self._run_call_in(body, here)
        return here.answer

    async def _deliver(self, message: QueueMessage) -> None:
        """The bus's way in: a call handed over in this process runs at once, in the caller's
        task (`_run_in_delivery`); everything else goes through `handle_message`.

        Only here: this handler is called within the publisher's `publish` (the consumer is
        inline), which is what lets the answer go back on the message. `handle_message` may be
        called from anywhere (`/process_message`, a transport's loop), so it queues for the pool.
        """
        tool_call = message.carried(ToolCall)
        if (
            tool_call is None
            or message.action is not ActionTypes.NEW_TOOL_CALL
            or not self._runs_in_caller(tool_call)
        ):
            await self.handle_message(message)
            return
        if not tool_call.source_id:
            tool_call.source_id = message.publisher_id
        await self._run_in_delivery(tool_call, message)

    def _runs_in_caller(self, tool_call: ToolCall) -> bool:
        """May this call, handed over in this process, run in its caller's task? Not if our
        consumer is not called within the publish, nor for a tool anyio runs in a thread it
        cannot abandon (`threaded`: it stays with the pool, see `_run_in_delivery`)."""
        calls = self._calls
        return calls.inline and tool_call.tool_call_bundle.tool_name not in calls.threaded

    async def register_to_message_queue(self) -> Consumer:
        consumer = await super().register_to_message_queue()
        self._calls.inline = consumer.inline
        return consumer

    async def process_message(self, message: QueueMessage) -> None:
        if message.action == ActionTypes.NEW_TOOL_CALL:
            try:
                tool_call = ToolCall.model_validate(message.data)
                tool_call.source_id = tool_call.source_id or message.publisher_id
            except ValidationError as exc:
                await self._refuse(message, exc)
                return
            if message.trace is not None and self.service_host.tracing is not None:
                self._calls.traces[tool_call.id_] = message.trace  # a worker picks it up
            await self.submit_call(tool_call)
        elif message.action == ActionTypes.NEW_TASK:
            task = message.body_as(NewTask).task
            self.spawn(task, lambda: self.execute_task(task))
        else:
            raise ValueError(f"{self.service_name} does not handle {message.action!r}")

    async def _refuse(self, message: QueueMessage, exc: ValidationError) -> None:
        """An unreadable NEW_TOOL_CALL still gets an error answer when it names its id."""
        call_id = message.data.get("id_")
        logger.warning("%s: malformed tool call from %s", self.service_name, message.publisher_id)
        if not isinstance(call_id, str):
            return
        tool_call = ToolCall(
            id_=call_id,
            source_id=message.publisher_id,
            tool_call_bundle=ToolCallBundle(tool_name=str(message.data.get("tool_name", "?"))),
        )
        await self._answer(
            tool_call, f"Error: malformed tool call: {exc.error_count()} error(s)", True
        )

    async def submit_call(self, tool_call: ToolCall) -> None:
        """Run `tool_call` in the background; its caller always gets an answer."""
        calls = self._calls
        assert calls.pool is not None, "service not started"
        calls.outstanding[tool_call.id_] = tool_call
        await calls.pool.submit(tool_call)

    async def _run_in_delivery(self, tool_call: ToolCall, delivery: AnswerPlace) -> None:
        """Run a call handed over in this process right here, in its caller's task, in the
        trace context the message carries.

        The caller (a ReplyInbox) publishes and then only waits for the answer, so running the
        tool within its publish saves the hand-off to a worker and the wake-up for the answer,
        two trips round the event loop that cost more than the bus itself; the answer is handed
        back on the delivered message when the caller reads it there. The limiter bounds
        these calls as it bounds the pool's. The caller's timeout and cancellation now reach
        the tool; cancelled, it is answered `cancelled` like any call, and anything else it
        raises fails this call only (`_run_call_in`). Tools run in a thread that anyio cannot
        abandon (`threaded`) stay with the pool, where they cannot hold a caller past its
        timeout.
        """
        self._calls.outstanding[tool_call.id_] = tool_call
        tracing, trace = self.service_host.tracing, delivery.trace
        with user_code():  # tasks the tool starts are contained, as in a worker
            if tracing is None or trace is None:
                await self._run_call_in(tool_call, delivery)
                return
            with tracing.attached(trace):  # as handle_message would have
                await self._run_traced(tool_call, trace, delivery)

    async def _run_call(self, tool_call: ToolCall) -> None:
        enter_user_code()  # a pool worker runs nothing but tools
        traces = self._calls.traces
        carrier = traces.pop(tool_call.id_, None) if traces else None
        await self._run_traced(tool_call, carrier)

    async def _run_traced(
        self,
        tool_call: ToolCall,
        carrier: dict[str, str] | None,
        delivery: AnswerPlace | None = None,
    ) -> None:
        if carrier is None:
            await self._run_call_in(tool_call, delivery)
            return
        tracing = self.service_host.tracing
        name = tool_call.tool_call_bundle.tool_name
        with tracing.tool_run(carrier, name, self.service_name) as span:
            error = await self._run_call_in(tool_call, delivery)
            if error is not None:
                tracing.mark_error(span, error)

    async def _run_call_in(
        self, tool_call: ToolCall, delivery: AnswerPlace | None = None
    ) -> str | None:
        """Run one call and answer it (on `delivery`, the message it came in, when its caller
        reads the answer there); returns the answer if it is an error."""
        try:
            output = await self.run_tool(tool_call.tool_call_bundle)
            text, is_error = output.content, output.is_error
        except ToolError as exc:
            text, is_error = f"Error: {exc}", True
        except BaseException as exc:
            if is_our_cancellation(exc):  # shutdown: the caller still hears about it
                self._calls.outstanding.pop(tool_call.id_, None)
                with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                    text = "Error: the tool call was cancelled"
                    await self._answer(tool_call, text, True, delivery)
                raise
            # Anything else the tool raised (even SystemExit) fails this call only.
            name = tool_call.tool_call_bundle.tool_name
            text, is_error = f"Error: tool {name!r} raised {describe(exc)}", True
        self._calls.outstanding.pop(tool_call.id_, None)
        if delivery is not None and delivery.wants_answer_here():
            delivery.answer_here(Reply(text, is_error))  # as _answer would, one await less
        else:
            await self._answer(tool_call, text, is_error, delivery)
        return text if is_error else None

    async def _abandon_call(self, tool_call: ToolCall) -> None:
        """A call still queued when the workers stop (shutdown): its caller hears so now."""
        self._calls.outstanding.pop(tool_call.id_, None)
        await self._answer(tool_call, "Error: the tool call was cancelled before it ran", True)

    async def _answer(
        self,
        tool_call: ToolCall,
        text: str,
        is_error: bool,
        delivery: AnswerPlace | None = None,
    ) -> None:
        """COMPLETED_TOOL_CALL to the caller (and kept, for calls started over HTTP); handed
        back on `delivery` when the caller runs this call within its publish and reads the
        answer there (no second trip over the bus)."""
        if delivery is not None and delivery.wants_answer_here():
            delivery.answer_here(Reply(text, is_error))  # nothing else reads it: no wire shape
            return
        calls = self._calls
        result = ToolCallResult.answering(tool_call, text, is_error)
        done = calls.http_done.pop(tool_call.id_, None)
        if done is not None:
            calls.http_results[tool_call.id_] = result
            while len(calls.http_results) > RETAINED_HTTP_RESULTS:
                calls.http_results.popitem(last=False)
            done.set()
        if not tool_call.source_id:
            return
        assert calls.bus is not None, "service not started"
        # Handed over as the object: a caller in this process reads it as is, a transport that
        # leaves the process writes its JSON.
        reply = QueueMessage.carrying(
            result,
            publisher_id=calls.publisher_id,
            type=tool_call.source_id,
            action=ActionTypes.COMPLETED_TOOL_CALL,
        )
        try:  # replies go to a bus inbox, never to a remote control plane: straight to the bus
            await calls.bus.publish(reply, timeout=REPLY_TIMEOUT)
        except BusError as exc:
            logger.warning("could not answer tool call %s: %s", tool_call.id_, exc)

    async def run_tool(self, bundle: ToolCallBundle) -> ToolOutput:
        """Run one tool: waits while stopped, bounded by the limiter and `timeout`."""
        calls = self._calls
        tool = calls.by_name.get(bundle.tool_name)
        if tool is None:
            raise UnknownTool(self._unknown(bundle.tool_name))
        calls.checks[bundle.tool_name](bundle.tool_args, bundle.tool_kwargs)
        if not self.running:
            await self._wait_until_running()
        limiter = calls.limiter
        assert limiter is not None, "service not started"
        # Borrowed per call, not per task: a caller's task may run a call of this service that
        # makes another (a tool calling a tool), and anyio lends a task one token at most.
        borrower = object()
        try:
            limiter.acquire_on_behalf_of_nowait(borrower)  # no extra trip round the loop
        except anyio.WouldBlock:
            await limiter.acquire_on_behalf_of(borrower)
        try:
            if self.timeout is None:
                return await tool.acall(*bundle.tool_args, **bundle.tool_kwargs)
            with anyio.move_on_after(self.timeout):
                return await tool.acall(*bundle.tool_args, **bundle.tool_kwargs)
            raise ToolTimeout(f"tool {bundle.tool_name!r} did not finish within {self.timeout}s")
        except TypeError as exc:
            raise BadArguments(f"bad arguments for tool {bundle.tool_name!r}: {exc}") from exc
        finally:
            limiter.release_on_behalf_of(borrower)

    async def execute_task(self, task: TaskDefinition) -> TaskResult:
        """A control-plane task whose input is `{"tool": name, "kwargs": {...}}`."""
        bundle = bundle_from_input(task.input)
        output = await self.run_tool(bundle)
        if output.is_error:
            return TaskResult(task_id=task.task_id, status=TaskStatus.FAILED, error=output.content)
        return TaskResult(
            task_id=task.task_id,
            result=output.content,
            data={"tool": bundle.tool_name, "raw_output": to_jsonable(output.raw_output)},
            output=to_jsonable(output.raw_output),
        )

    def _unknown(self, name: str) -> str:
        names = ", ".join(self._calls.by_name) or "-"
        return f"unknown tool {name!r}; {self.service_name} has: {names}"
