"""BaseService: what every hosted service is, rebuilt on Starlette and anyio.

A service owns its Starlette routes (relative to its prefix), consumes messages of its own name
from the bus, and runs each task inside the host's task group under a CancelScope, a
CapacityLimiter and an optional timeout. Nothing here polls: the bus pushes messages in, and the
`running` switch is an event that paused tasks wait on.

Size: the contract every service implements (routes, bus consumer, spawn with its cancel
scope, the reference's registration and launcher methods) is read as one piece by service authors.
"""

from __future__ import annotations

import functools
import logging
import os
import traceback
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import anyio
import httpx
from anyio.abc import TaskGroup
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.bus import Consumer, NoConsumer
from gateway.bus.http_remote import RemoteConsumer
from gateway.bus.memory import MessageBus
from gateway.contain import (
    cancelled_by_a_scope,
    clear_stray_cancel,
    describe,
    is_our_cancellation,
    user_code,
)
from gateway.control_plane.tasks import Task
from gateway.messages import (
    CONTROL_PLANE_NAME,
    ActionTypes,
    QueueMessage,
    ServiceDefinition,
    TaskDefinition,
    TaskEvent,
    TaskResult,
    TaskStatus,
    ToolCall,
    ToolCallBundle,
    ToolCallResult,
    new_id,
)
from gateway.web.errors import ApiError
from gateway.web.routing import JsonBytes, api_route
from gateway.web.sse import sse_response
from services.private_reads import read_privates_directly
from services.task_workers import TaskWorkers

if TYPE_CHECKING:
    from gateway.control_plane.plane import ControlPlane

logger = logging.getLogger("services")

SERVICE_TOKEN_ENV = "GATEWAY_SERVICE_TOKEN"

Work = Callable[[], Awaitable[TaskResult]]
_Spawned = tuple[TaskDefinition, Work, anyio.CancelScope]  # what `spawn` hands a worker
MAX_IDLE_WORKERS = 64  # idle task workers kept per service (services.task_workers)


@dataclass
class ServiceHost:
    """What a service gets from the gateway when it starts: the host side of the contract."""

    bus: MessageBus
    control_plane: ControlPlane
    task_group: TaskGroup
    secret: bytes
    services: dict[str, BaseService] = field(default_factory=dict)
    tracing: Any = None  # gateway.observe.tracing.Tracing when tracing is on

    def service(self, name: str) -> BaseService:
        try:
            return self.services[name]
        except KeyError:
            raise LookupError(f"no service named {name!r} in this gateway") from None


class ServiceInfo(BaseModel):
    """`GET /` of every service; subclasses add their own fields."""

    model_config = ConfigDict(extra="allow")

    service_name: str
    description: str
    type: str
    running: bool
    num_outstanding_calls: int


# The answer of a synchronous `/run` is the task, in the one shape our API shows tasks in.
RunResponse = Task


class RunQuery(BaseModel):
    """Query of every `/run`: `stream=true` answers with Server-Sent Events instead."""

    stream: bool = False
    after: int | None = Field(
        default=None, ge=0, description="with stream: resume after this event id"
    )


class BaseService(BaseModel, ABC):
    """A service of the gateway. Subclasses provide `routes()` and `process_message()`."""

    model_config = ConfigDict(arbitrary_types_allowed=True, validate_assignment=True)

    service_type: ClassVar[str] = "custom"
    # True when `handle_message` only hands work on (spawns it, sets an event) and never waits:
    # the in-memory bus then calls it within `publish`, saving the receive loop's wake-up.
    inline_delivery: ClassVar[bool] = False

    service_name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str = "A gateway service."
    running: bool = True
    step_interval: float = Field(
        default=0.1, description="Kept for compatibility with the reference; nothing polls."
    )
    host: str | None = None
    port: int | None = None
    prefix: str | None = None
    max_concurrent_tasks: int = Field(default=8, ge=1)
    max_queued_tasks: int = Field(default=1024, ge=1)
    timeout: float | None = Field(default=None, gt=0)
    raise_exceptions: bool = False

    _host: ServiceHost | None = PrivateAttr(default=None)
    _publisher_id: str = PrivateAttr(default_factory=new_id)
    _limiter: anyio.CapacityLimiter | None = PrivateAttr(default=None)
    _workers: TaskWorkers[_Spawned] | None = PrivateAttr(default=None)
    _running_event: anyio.Event | None = PrivateAttr(default=None)
    _scopes: dict[str, anyio.CancelScope] = PrivateAttr(default_factory=dict)
    _tool_calls: dict[str, ToolCall] = PrivateAttr(default_factory=dict)
    _control_plane_url: str | None = PrivateAttr(default=None)
    _service_token: str | None = PrivateAttr(default=None)
    _http: httpx.AsyncClient | None = PrivateAttr(default=None)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        read_privates_directly(cls)  # the subclass's own private attributes too

    # -- identity and discovery ---------------------------------------------------------------
    @functools.cached_property
    def publisher_id(self) -> str:
        return f"{type(self).__qualname__}-{self._publisher_id}"

    @property
    def tool_name(self) -> str:
        """The name this service has when another service uses it as a tool."""
        return f"{self.service_name}-as-tool"

    @property
    def mount_prefix(self) -> str:
        return self.prefix or f"/services/{self.service_name}"

    @property
    def service_definition(self) -> ServiceDefinition:
        prefix = self.mount_prefix
        endpoints = []
        for route in self.routes():
            if isinstance(route, Route):
                for method in sorted((route.methods or set()) - {"HEAD"}):
                    endpoints.append(f"{method} {prefix}{route.path}")
        return ServiceDefinition(
            service_name=self.service_name,
            description=self.description,
            host=self.host,
            port=self.port,
            type=self.service_type,
            prefix=prefix,
            endpoints=endpoints,
        )

    @abstractmethod
    def routes(self) -> list[BaseRoute]:
        """This service's routes, relative to its prefix."""

    def common_routes(self) -> list[BaseRoute]:
        """`GET /` and `POST /process_message`, which every service has."""
        return [
            api_route("/", self._home, response=ServiceInfo, summary="Service information"),
            api_route(
                "/process_message",
                self._process_message_http,
                methods=["POST"],
                body=QueueMessage,
                summary="Hand a bus message to this service (remote delivery)",
                errors=(400, 401, 403, 422),
                name="process_message",
            ),
        ]

    async def _home(self, request: Request) -> dict[str, Any]:
        return await self.home()

    async def home(self) -> dict[str, Any]:
        return ServiceInfo(
            service_name=self.service_name,
            description=self.description,
            type=self.service_type,
            running=self.running,
            num_outstanding_calls=len(self._scopes),
        ).model_dump()

    async def _process_message_http(self, request: Request, body: QueueMessage) -> dict:
        # Remote delivery: the app lets only service tokens through (gateway.web.middleware.Gate).
        try:
            await self.handle_message(body)
        except ValueError as exc:  # an action this service does not take, or malformed data
            raise ApiError(422, f"{self.service_name} cannot handle this message: {exc}") from None
        return {"accepted": body.id_}

    # -- bus --------------------------------------------------------------------------------
    @property
    def service_host(self) -> ServiceHost:
        # Read from the private dict: even services.private_reads' descriptor behind `self._host`
        # costs more than this, and it runs several times per task (+25k instructions a /run).
        host = self.__pydantic_private__["_host"]
        if host is None:
            raise RuntimeError(f"service {self.service_name!r} is not started")
        return host

    @property
    def bus(self) -> MessageBus:
        return self.service_host.bus

    def as_consumer(self, remote: bool = False) -> Consumer:
        if remote:
            url = httpx.URL(
                scheme="http",
                host=self.host or "127.0.0.1",
                port=self.port,
                path=f"{(self.prefix or '').rstrip('/')}/process_message",
            )
            return RemoteConsumer(
                message_type=self.service_name, url=str(url), token=self._service_token
            )
        return Consumer(
            message_type=self.service_name,
            handler=self.handle_message,
            id_=self.publisher_id,
            inline=self.inline_delivery,
        )

    async def register_to_message_queue(self) -> Consumer:
        return self.bus.register_consumer(self.as_consumer())

    async def handle_message(self, message: QueueMessage) -> None:
        """Entry point of every message: cancellation is common, the rest is the subclass's.

        A message that carries a trace context is handled inside it, so the work it spawns
        (which copies the current context) parents to the publisher's span.
        """
        if message.trace is not None and self._host is not None and self._host.tracing:
            with self._host.tracing.attached(message.trace):
                await self._handle_message(message)
            return
        await self._handle_message(message)

    async def _handle_message(self, message: QueueMessage) -> None:
        if message.action == ActionTypes.CANCEL_TASK:
            scope = self._scopes.get(str(message.data.get("task_id")))
            if scope is not None:
                scope.cancel()
            return
        await self.process_message(message)

    @abstractmethod
    async def process_message(self, message: QueueMessage) -> None:
        """Handle a message addressed to this service; must return quickly (spawn the work)."""

    def task_taker(self) -> Callable[[TaskDefinition, dict[str, Any]], None] | None:
        """What takes this service's tasks by call from the control plane of its own process,
        instead of as NEW_TASK messages; None (the default): messages only."""
        return None

    async def publish(self, message: QueueMessage, timeout: float | None = None) -> None:
        """Publish as this service. Results wait for room rather than being dropped."""
        message.publisher_id = self.publisher_id
        if self._control_plane_url and message.type == CONTROL_PLANE_NAME:
            await self._post_to_control_plane(message)
            return
        await self.bus.publish(message, timeout=timeout)

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self, host: ServiceHost) -> None:
        """Attach to the gateway: register the consumer and run `on_start`."""
        self._host = host
        self._limiter = anyio.CapacityLimiter(self.max_concurrent_tasks)
        self._workers = TaskWorkers(
            self._run_spawned,
            host.task_group,
            self.service_name,
            max_idle=min(self.max_concurrent_tasks, MAX_IDLE_WORKERS),
            abandon=self._abandon_spawned,
        )
        self._running_event = anyio.Event()
        if self.running:
            self._running_event.set()
        await self.register_to_message_queue()
        await self.on_start()

    def attach(self, host: ServiceHost) -> None:
        """Know the gateway without serving: another process hosts this service, and this one
        only forwards its `/run` (and lends its metadata, e.g. tool schemas, to agents)."""
        self._host = host

    async def on_start(self) -> None:
        """Hook for subclasses that wire themselves to other services once all are mounted."""

    # The reference's standalone launchers. Launching is the host's job (gateway.runtime and
    # gateway.app), so these are thin delegates that import the host lazily: a service module
    # never imports the assembly at import time (tests/test_layout.py keeps it that way).
    async def processing_loop(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve this service alone, in-process, until cancelled (a one-service gateway)."""
        from gateway.runtime import serve_alone

        await serve_alone(self, task_status=task_status)

    async def launch_local(self, task_group: anyio.abc.TaskGroup) -> None:
        """Run `processing_loop` inside the caller's task group; returns once it is serving."""
        await task_group.start(self.processing_loop, name=f"service:{self.service_name}")

    async def launch_server(self, host: str | None = None, port: int | None = None) -> None:
        """Serve this service alone over HTTP with uvicorn (its routes under its prefix)."""
        from gateway.app import serve_over_http

        bind_host = host or getattr(self, "internal_host", None) or self.host or "127.0.0.1"
        bind_port = port or getattr(self, "internal_port", None) or self.port or 8000
        await serve_over_http(self, bind_host, bind_port)

    @property
    def service_token(self) -> str | None:
        """The service token it joined a gateway with (see `register_to_control_plane`)."""
        return self._service_token

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._service_token}"} if self._service_token else {}

    async def register_to_control_plane(
        self, control_plane_url: str, token: str | None = None
    ) -> None:
        """Join a gateway running elsewhere; results then go back to it over HTTP.

        `token` (default: `$GATEWAY_SERVICE_TOKEN`) is one of the gateway's service tokens
        (`remote_services.tokens_env`). The gateway presents it back when it delivers messages
        here, and this service's `/process_message` accepts nothing else.
        """
        self._service_token = token or os.environ.get(SERVICE_TOKEN_ENV) or None
        url = httpx.URL(control_plane_url.rstrip("/") + "/")
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(
                url.join("services/register"),
                json=self.service_definition.model_dump(),
                headers=self._auth_headers(),
            )
            response.raise_for_status()
        self._control_plane_url = str(url)

    async def deregister_from_control_plane(self, control_plane_url: str) -> None:
        url = httpx.URL(control_plane_url.rstrip("/") + "/")
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(
                url.join("services/deregister"),
                json={"service_name": self.service_name},
                headers=self._auth_headers(),
            )
            response.raise_for_status()
        self._control_plane_url = None

    async def _post_to_control_plane(self, message: QueueMessage) -> None:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=30)
        assert self._control_plane_url is not None
        response = await self._http.post(
            httpx.URL(self._control_plane_url).join("process_message"),
            content=message.model_dump_json(),
            headers=self._auth_headers(),
        )
        response.raise_for_status()

    # -- running switch ---------------------------------------------------------------------
    def set_running(self, running: bool) -> None:
        """Pause or resume: paused tasks wait (in order) on an event, nothing is dropped."""
        self.running = running
        if self._running_event is None:
            return
        if running:
            self._running_event.set()
        elif self._running_event.is_set():
            self._running_event = anyio.Event()

    async def _wait_until_running(self) -> None:
        while not self.running:
            assert self._running_event is not None
            await self._running_event.wait()

    # -- running tasks ----------------------------------------------------------------------
    def spawn(self, task: TaskDefinition, work: Work, *, tool_call: ToolCall | None = None) -> None:
        """Run `work` for `task` in the host's task group; its outcome is always reported.

        A worker of the service's runs it (services.task_workers), in the context the service
        started in; with tracing on, a task of its own, in the submitter's context (its span's
        parent)."""
        if tool_call is not None:
            self._tool_calls[task.task_id] = tool_call
        tracing = self.service_host.tracing
        scope = anyio.CancelScope()
        self._scopes[task.task_id] = scope
        workers = self.__pydantic_private__["_workers"]
        if tracing is None and workers is not None:
            workers.submit((task, work, scope))  # see services.task_workers
            return
        # Traced: a task of its own, whose span's parent is the submitter's (its context).
        if tracing is not None:
            work = tracing.traced_work(work, self.service_name, task.task_id, task.session_id)
        self.service_host.task_group.start_soon(
            self._guarded, task, work, scope, name=f"{self.service_name}:{task.task_id}"
        )

    async def _run_spawned(self, spawned: _Spawned) -> None:
        await self._guarded(*spawned)

    async def _abandon_spawned(self, spawned: _Spawned) -> None:
        """A task still queued for a worker when the workers stop (shutdown): it ends
        `cancelled`, as it would have had it started."""
        task = spawned[0]
        try:
            cancelled = TaskResult(
                task_id=task.task_id, status=TaskStatus.CANCELLED, error="cancelled"
            )
            await self._report_end(task, cancelled)
        finally:
            self._scopes.pop(task.task_id, None)
            self._tool_calls.pop(task.task_id, None)

    async def _guarded(self, task: TaskDefinition, work: Work, scope: anyio.CancelScope) -> None:
        result: TaskResult | None = None
        reported = False
        try:
            with scope:
                try:
                    await self._wait_until_running()
                    limiter = self._limiter
                    assert limiter is not None
                    # A free slot is taken at once (`async with` would yield to the loop first).
                    try:
                        limiter.acquire_nowait()
                    except anyio.WouldBlock:
                        await limiter.acquire()
                    try:
                        await self.report_status(task.task_id, TaskStatus.RUNNING)
                        result = await self._run_with_timeout(task, work, scope)
                    finally:
                        limiter.release()
                except Exception as exc:
                    result = self.failure(task.task_id, exc)
            # Without a result, the scope caught a cancel request (a shutdown propagates).
            if result is None:
                result = TaskResult(
                    task_id=task.task_id, status=TaskStatus.CANCELLED, error="cancelled"
                )
            # Report even while the host is shutting down, but never hang it.
            reported = True
            with anyio.move_on_after(2, shield=True):
                await self._report_end(task, result)
        except anyio.get_cancelled_exc_class():
            if cancelled_by_a_scope():  # shutdown: the control plane's drain ends the task
                raise
            # A bare task.cancel() from the task's own code (cancelling "its own" task, or a
            # timer it left behind): it ends this task only, never the task it ran in.
            clear_stray_cancel()
            logger.warning("task %s: its code cancelled the task it ran in", task.task_id)
            if not reported:
                stray = TaskResult(
                    task_id=task.task_id,
                    status=TaskStatus.CANCELLED,
                    error="cancelled by its own code (a bare task.cancel())",
                )
                with anyio.move_on_after(2, shield=True):
                    await self._report_end(task, stray)
        finally:
            self._scopes.pop(task.task_id, None)
            self._tool_calls.pop(task.task_id, None)

    async def _report_end(self, task: TaskDefinition, result: TaskResult) -> None:
        """Report `result`; if it cannot be (e.g. it does not serialize), report a failure."""
        tool_call = self._tool_calls.get(task.task_id)
        try:
            await self.finish_task(result)
            return
        except Exception as exc:
            logger.exception("could not report the end of task %s", task.task_id)
            error = f"the result could not be reported: {type(exc).__name__}: {exc}"
        if tool_call is not None:
            self._tool_calls[task.task_id] = tool_call
        try:
            await self.finish_task(
                TaskResult(task_id=task.task_id, status=TaskStatus.FAILED, error=error)
            )
        except Exception:
            logger.exception("could not report the failure of task %s", task.task_id)

    async def _run_with_timeout(
        self, task: TaskDefinition, work: Work, scope: anyio.CancelScope | None = None
    ) -> TaskResult:
        if self.timeout is None:  # no deadline: no cancel scope to set up
            return await self._attempt(task, work, scope)
        with anyio.move_on_after(self.timeout) as deadline:
            return await self._attempt(task, work, scope, deadline)
        assert deadline.cancelled_caught
        return TaskResult(
            task_id=task.task_id,
            status=TaskStatus.TIMED_OUT,
            error=self.timeout_message(task.task_id),
        )

    def timeout_message(self, task_id: str) -> str:
        """The error of a task past `timeout`; subclasses say what it was waiting for."""
        return f"{self.service_name} did not finish within {self.timeout}s"

    async def _attempt(
        self, task: TaskDefinition, work: Work, *scopes: anyio.CancelScope | None
    ) -> TaskResult:
        """Run `work` (user code); whatever it raises becomes this task's failed result.

        Only a cancellation the gateway asked for (a cancel request, the timeout, shutdown)
        passes through; `SystemExit`, `KeyboardInterrupt`, any other `BaseException` and a
        `CancelledError` the user's code raised end this task only (see gateway.contain).
        """
        try:
            with user_code():
                return await work()
        except BaseException as exc:
            if is_our_cancellation(exc, *scopes):
                raise
            return self.failure(task.task_id, exc)

    def failure(self, task_id: str, exc: BaseException) -> TaskResult:
        """A failed TaskResult carrying the error text (and the traceback if asked for)."""
        error = describe(exc)
        if self.raise_exceptions:
            error += "\n" + "".join(traceback.format_exception(exc))
        logger.warning("task %s of %s failed: %s", task_id, self.service_name, error)
        return TaskResult(task_id=task_id, status=TaskStatus.FAILED, error=error)

    async def finish_task(self, result: TaskResult) -> None:
        """Report a task's end: to its tool-call caller if it was one, else the control plane."""
        tool_call = self._tool_calls.pop(result.task_id, None)
        if tool_call is not None and tool_call.source_id:
            ok = result.status is TaskStatus.COMPLETED
            text = result.result if ok else (result.error or result.status.value)
            await self.answer_tool_call(tool_call, text, is_error=not ok)
            return
        # Handed over as the object; serialized once here anyway, because a result that has no
        # JSON form (too deep, say) must fail now, as what could not be reported, not later in
        # whichever response or stream first tries to write it.
        result.__pydantic_serializer__.to_json(result)
        plane = self._plane_in_process()
        if plane is not None:
            await self._to_plane(plane.take_result(result, self.publisher_id), result.task_id)
            return
        await self.publish(
            QueueMessage.carrying(
                result, type=CONTROL_PLANE_NAME, action=ActionTypes.COMPLETED_TASK
            )
        )

    async def answer_tool_call(self, tool_call: ToolCall, text: str, is_error: bool) -> None:
        """Send COMPLETED_TOOL_CALL to whoever asked (`source_id`)."""
        assert tool_call.source_id is not None
        result = ToolCallResult.answering(tool_call, text, is_error)
        try:
            await self.publish(
                QueueMessage(
                    type=tool_call.source_id,
                    action=ActionTypes.COMPLETED_TOOL_CALL,
                    data=result.model_dump(mode="json"),
                )
            )
        except NoConsumer:  # the caller is gone (or never was): nobody is waiting for this
            logger.warning(
                "tool call %s: its caller %r is not on the bus; answer dropped",
                tool_call.id_,
                tool_call.source_id,
            )

    def task_as_tool_call(self, message: QueueMessage) -> tuple[TaskDefinition, ToolCall]:
        """A NEW_TOOL_CALL addressed to a whole service, read as a task (service as tool)."""
        task = message.body_as(TaskDefinition)  # a ServiceAsTool in this process hands it over
        tool_call = ToolCall(
            id_=task.task_id,
            source_id=message.publisher_id,
            tool_call_bundle=ToolCallBundle(
                tool_name=self.tool_name, tool_kwargs={"input": task.input}
            ),
        )
        return task, tool_call

    async def report_status(self, task_id: str, status: TaskStatus) -> None:
        if task_id in self._tool_calls:
            return
        plane = self._plane_in_process()
        # Straight to the control plane unless a subclass publishes events its own way.
        if plane is not None and type(self).publish_event is BaseService.publish_event:
            await self._to_plane(plane.take_status(task_id, status, self.publisher_id), task_id)
            return
        await self.publish_event(TaskEvent(task_id=task_id, kind="status", status=status))

    async def publish_event(self, event: TaskEvent) -> None:
        plane = self._plane_in_process()
        if plane is not None:
            await self._to_plane(plane.take_event(event, self.publisher_id), event.task_id)
            return
        await self.publish(
            QueueMessage.carrying(event, type=CONTROL_PLANE_NAME, action=ActionTypes.TASK_STREAM)
        )

    # Reports (status, events, ends) go to the control plane of this process as calls: the bus
    # would deliver them inline to it anyway (both transports keep control-plane messages in
    # the process), so the envelope and its dispatch were pure cost (~10 µs per report, two
    # or more per task). A service that joined a gateway elsewhere still posts messages.
    def _plane_in_process(self) -> ControlPlane | None:
        if self.__pydantic_private__["_control_plane_url"]:
            return None
        host = self.__pydantic_private__["_host"]
        return None if host is None else host.control_plane

    @staticmethod
    async def _to_plane(report: Awaitable[None], task_id: str) -> None:
        """Await a report as the bus would have delivered it: what the control plane raises is
        logged, and the reporting task goes on."""
        try:
            await report
        except Exception:
            logger.exception("the control plane failed on a report for task %s", task_id)

    # -- synchronous runs -------------------------------------------------------------------
    async def run_and_wait(
        self,
        task: TaskDefinition,
        wait: float | None,
        stream: bool = False,
        after: int = 0,
        sent: Any = None,
    ) -> JsonBytes | Response:
        """Submit through the control plane (so the task is visible) and wait for its end.

        With `stream`, answer at once with the task's Server-Sent Events instead; a re-POST of
        the same task id with a resume point (`after` > 0, from `Last-Event-ID`) resumes that
        task's stream instead of submitting it again. `sent` is the input as the client gave
        it (shown back on the task).
        """
        control_plane = self.service_host.control_plane
        if stream:
            if after and task.task_id in control_plane.tasks:
                if control_plane.tasks.get(task.task_id).service != self.service_name:
                    raise ApiError(409, f"task {task.task_id!r} belongs to another service")
                return sse_response(control_plane.subscribe(task.task_id, after))
            record = await control_plane.submit(task, self.service_name, sent=sent)
            return sse_response(control_plane.subscribe(record.task_id, after))
        record = await control_plane.run(task, self.service_name, wait, sent=sent)
        if not record.is_terminal:
            return Response(record.view_json(), 202, media_type="application/json")
        return JsonBytes(record.view_json())  # a Task's JSON, without building the Task


read_privates_directly(BaseService)
