"""The llama-agents (`WorkflowServer`) HTTP protocol, served over our workflow services.

`llama-agents-client`'s `WorkflowClient` and the `@llamaindex/ui` hooks speak it. A workflow
service's name is the workflow name; a *handler* is one of our tasks. A handler continued with
`handler_id` becomes a new task in the handler's own session (`h:<handler_id>`), so its context
is our signed, stored workflow context; the handler always shows its latest run. Bodies, status
codes and event envelopes follow that server; where its semantics are weaker (handlers lost on
restart, no back-pressure, contexts accepted unsigned from clients), ours apply.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute
from workflows.events import StartEvent
from workflows.representation import get_workflow_representation

from gateway.control_plane.plane import ControlPlane
from gateway.control_plane.tasks import TaskRecord
from gateway.messages import ID_PATTERN, TaskDefinition, TaskEvent, TaskStatus
from gateway.protocols import envelopes
from gateway.web.errors import ApiError
from gateway.web.routing import api_route
from services.workflow import WorkflowService

TAG = "llama-agents protocol"
SESSION_PREFIX = "h:"
# How long a send_event waits for a just-submitted handler to start running.
START_WAIT = 10.0
# A cursor past any issued event number: the hub then starts at "now".
NOW = 2**62

_STATUS = {
    TaskStatus.COMPLETED: "completed",
    TaskStatus.FAILED: "failed",
    TaskStatus.TIMED_OUT: "failed",
    TaskStatus.CANCELLED: "cancelled",
}


# -- wire models (the protocol's shapes) --------------------------------------------------------
class RunBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    start_event: Any = None
    kwargs: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    handler_id: str | None = Field(default=None, pattern=ID_PATTERN, max_length=120)


class EventEnvelope(BaseModel):
    value: dict[str, Any]
    qualified_name: str | None = None
    type: str
    types: list[str] | None = None


class HandlerData(BaseModel):
    handler_id: str
    workflow_name: str
    run_id: str | None
    error: str | None
    result: EventEnvelope | None
    result_unreadable: bool = False
    status: str = Field(description="running, completed, failed or cancelled")
    started_at: str
    updated_at: str | None
    completed_at: str | None


class ResultData(HandlerData):
    """`GET /results/{id}`: the handler, with `result` the bare result of its StopEvent."""

    result: Any = None


class HandlersList(BaseModel):
    handlers: list[HandlerData]


class WorkflowsList(BaseModel):
    workflows: list[str]


class Health(BaseModel):
    status: str


class SendEventBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    event: Any = None
    step: str | None = None


class Sent(BaseModel):
    status: str = "sent"


class Cancelled(BaseModel):
    status: str


class EventsQuery(BaseModel):
    sse: bool = True
    include_internal: bool = False
    include_qualified_name: bool = True
    after_sequence: str = "now"


class CancelQuery(BaseModel):
    purge: bool = False


class Schema(BaseModel):
    start: dict[str, Any]
    stop: dict[str, Any]


class EventSchemas(BaseModel):
    events: list[dict[str, Any]]


class Graph(BaseModel):
    graph: dict[str, Any]


# -- the protocol --------------------------------------------------------------------------------
class LlamaAgentsProtocol:
    def __init__(self, plane: ControlPlane, workflows: dict[str, WorkflowService], ready) -> None:
        self.plane = plane
        self.workflows = workflows
        self._ready = ready

    # handlers <-> tasks
    def _workflow(self, name: str) -> WorkflowService:
        service = self.workflows.get(name)
        if service is None:
            raise ApiError(404, "Workflow not found")
        return service

    def _latest(self, handler_id: str) -> TaskRecord:
        """The handler's latest run (the task of its own session, or the task of that id)."""
        session = self.plane.sessions.get(SESSION_PREFIX + handler_id)
        task_id = session.task_ids[-1] if session is not None and session.task_ids else handler_id
        try:
            record = self.plane.task(task_id)
        except ApiError:
            raise ApiError(404, "Handler not found") from None
        # a task of that id may be another handler's continuation, or a purged handler's run
        if not self._is_handler_task(record) or self._handler_of(record) != handler_id:
            raise ApiError(404, "Handler not found")
        return record

    def _is_handler_task(self, record: TaskRecord) -> bool:
        """A run of one of our workflows whose handler still exists (a purge deletes it)."""
        if record.service not in self.workflows:
            return False
        session = record.session_id or ""
        return (
            not session.startswith(SESSION_PREFIX) or self.plane.sessions.get(session) is not None
        )

    def _task_taken(self, task_id: str) -> bool:
        return task_id in self.plane.tasks or self.plane.store.load_task(task_id) is not None

    def handler_data(self, handler_id: str, record: TaskRecord) -> HandlerData:
        status = _STATUS.get(record.status, "running")
        updated = record.finished_at or record.started_at or record.created_at
        return HandlerData(
            handler_id=handler_id,
            workflow_name=record.service,
            run_id=record.task_id,
            error=record.error if status != "completed" else None,
            result=self._result(record) if status == "completed" else None,
            status=status,
            started_at=_iso(record.created_at),
            updated_at=_iso(updated),
            completed_at=_iso(record.finished_at) if record.finished_at else None,
        )

    @staticmethod
    def _result(record: TaskRecord) -> EventEnvelope:
        data = record.result.data if record.result is not None else {}
        stop = data.get("stop_event")
        if isinstance(stop, dict):
            return EventEnvelope.model_validate(stop)
        return EventEnvelope.model_validate(envelopes.stop_envelope(data.get("result")))

    @staticmethod
    def _handler_of(record: TaskRecord) -> str:
        session = record.session_id or ""
        return (
            session[len(SESSION_PREFIX) :] if session.startswith(SESSION_PREFIX) else record.task_id
        )

    # routes
    async def list_workflows(self, request: Request) -> WorkflowsList:
        return WorkflowsList(workflows=list(self.workflows))

    async def health(self, request: Request) -> Response:
        if not self._ready():
            return JSONResponse({"status": "unhealthy"}, status_code=503)
        return JSONResponse({"status": "healthy"})

    async def run(self, request: Request, body: RunBody) -> Response:
        record, handler_id = await self._start(request.path_params["name"], body)
        record = await self.plane.wait(record.task_id, None)
        data = self.handler_data(handler_id, record)
        status = 200 if data.status == "completed" else 500
        return Response(data.model_dump_json(), status, media_type="application/json")

    async def run_nowait(self, request: Request, body: RunBody) -> HandlerData:
        record, handler_id = await self._start(request.path_params["name"], body)
        return self.handler_data(handler_id, record)

    async def _start(self, name: str, body: RunBody) -> tuple[TaskRecord, str]:
        service = self._workflow(name)
        if body.context:
            raise ApiError(
                400,
                "a client-sent context is not accepted (it cannot be verified); continue a "
                "previous run by sending its handler_id",
            )
        kwargs = self._start_kwargs(service, body)
        handler_id = body.handler_id or TaskDefinition().task_id
        session_id = SESSION_PREFIX + handler_id
        session = self.plane.sessions.get(session_id)
        if session is None:
            task_id = handler_id
            if self._task_taken(handler_id):
                taken = self.plane.tasks.get(handler_id) or self.plane.store.load_task(handler_id)
                if taken is None or taken.session_id != session_id:
                    raise ApiError(409, f"handler id {handler_id!r} is taken by another task")
                task_id = self._free_task_id(handler_id, 2)  # the id of a purged handler
            session = self.plane.create_session(session_id)
        else:
            if session.task_ids:
                previous = self.plane.task(session.task_ids[-1])
                if not previous.is_terminal:
                    raise ApiError(409, f"Handler {handler_id!r} is already running")
                if previous.service != name:
                    raise ApiError(
                        409, f"handler {handler_id!r} belongs to workflow {previous.service!r}"
                    )
            task_id = self._free_task_id(handler_id, len(session.task_ids) + 1)
        task = TaskDefinition(task_id=task_id, input=json.dumps(kwargs), session_id=session_id)
        return await self.plane.submit(task, name), handler_id

    def _free_task_id(self, handler_id: str, n: int) -> str:
        """`<handler_id>.<n>` for the first n from here whose id no task holds (a client may
        have named another handler `abc.2` before handler `abc` ran twice)."""
        while self._task_taken(f"{handler_id}.{n}"):
            n += 1
        return f"{handler_id}.{n}"

    @staticmethod
    def _start_kwargs(service: WorkflowService, body: RunBody) -> dict[str, Any]:
        start_class = service.workflow.start_event_class
        raw = body.start_event if body.start_event is not None else (body.kwargs or {})
        known = {start_class.__name__: start_class, StartEvent.__name__: start_class}
        try:
            event_type, value = envelopes.read_event(raw, known, bare_as=start_class)
        except ValueError as exc:
            raise ApiError(400, f"Validation error for 'start_event': {exc}") from None
        return envelopes.start_kwargs(event_type, value)

    async def get_handler(self, request: Request) -> Response:
        handler_id = request.path_params["handler_id"]
        data = self.handler_data(handler_id, self._latest(handler_id))
        status = {"running": 202, "completed": 200}.get(data.status, 500)
        return Response(data.model_dump_json(), status, media_type="application/json")

    async def get_result(self, request: Request) -> Response:
        """Deprecated in the protocol: the handler, with `result` as the bare StopEvent result."""
        handler_id = request.path_params["handler_id"]
        data = self.handler_data(handler_id, self._latest(handler_id))
        body = data.model_dump(mode="json")
        if data.result is not None:
            value = data.result.value
            body["result"] = value.get("result") if data.result.type == "StopEvent" else value
        status = {"running": 202, "completed": 200}.get(data.status, 500)
        return JSONResponse(body, status_code=status)

    async def list_handlers(self, request: Request) -> HandlersList:
        statuses = _list_param(request, "status")
        names = _list_param(request, "workflow_name")
        latest: dict[str, TaskRecord] = {}
        for record in self.plane.tasks.all():
            if not self._is_handler_task(record) or (names and record.service not in names):
                continue
            handler_id = self._handler_of(record)
            current = latest.get(handler_id)
            if current is None or record.created_at >= current.created_at:
                latest[handler_id] = record
        items = [self.handler_data(h, r) for h, r in latest.items()]
        if statuses is not None:
            items = [item for item in items if item.status in statuses]
        items.sort(key=lambda item: item.started_at, reverse=True)
        return HandlersList(handlers=items)

    async def cancel(self, request: Request, query: CancelQuery) -> Cancelled:
        handler_id = request.path_params["handler_id"]
        record = self._latest(handler_id)
        if record.is_terminal:
            if not query.purge:
                raise ApiError(404, "Handler not found")
        else:
            await self.plane.cancel(record.task_id)
        if query.purge:
            session = self.plane.sessions.get(SESSION_PREFIX + handler_id)
            if session is not None:
                await anyio.lowlevel.checkpoint()
                try:
                    await self.plane.delete_session(session.session_id)
                except ApiError:  # a concurrent purge deleted it first
                    raise ApiError(404, "Handler not found") from None
            return Cancelled(status="deleted")
        return Cancelled(status="cancelled")

    async def send_event(self, request: Request, body: SendEventBody) -> Sent:
        handler_id = request.path_params["handler_id"]
        if not body.event:
            raise ApiError(400, "Event data is required")
        record = self._latest(handler_id)
        if record.is_terminal:
            raise ApiError(409, "Workflow already completed")
        service = self._workflow(record.service)
        known = service.event_types()
        known.update(service.waited_event_types(record.task_id))
        try:
            event_type, value = envelopes.read_event(body.event, known)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        if record.status is TaskStatus.PENDING:
            await self._until_started(record.task_id)
        try:
            await self.plane.send_event(record.task_id, event_type.__name__, value)
        except ApiError as exc:
            if exc.status == 409:
                raise ApiError(409, "Workflow already completed") from None
            raise ApiError(400, str(exc.detail)) from None
        return Sent()

    async def _until_started(self, task_id: str) -> None:
        """A handler accepted an instant ago may still be queued: wait for its first status."""
        subscription = self.plane.subscribe(task_id)
        try:
            with anyio.move_on_after(START_WAIT):
                async for event in subscription:
                    if event.kind == "status" and event.status is not TaskStatus.PENDING:
                        return
                    if event.kind == "result":
                        return
        finally:
            subscription.close()

    async def stream_events(self, request: Request, query: EventsQuery) -> Response:
        handler_id = request.path_params["handler_id"]
        record = self._latest(handler_id)
        after = _cursor(query.after_sequence, request.headers.get("last-event-id"), query.sse)
        frames = self._frames(record, after, query.include_qualified_name)
        first = await anext(frames, None)
        if first is None:
            return Response(status_code=204)

        async def body() -> AsyncIterator[str]:
            item = first
            while item is not None:
                seq, envelope = item
                text = json.dumps(envelope, separators=(",", ":"))
                yield f"id: {seq}\ndata: {text}\n\n" if query.sse else text + "\n"
                item = await anext(frames, None)

        media = "text/event-stream" if query.sse else "application/x-ndjson"
        return StreamingResponse(
            body(),
            media_type=media,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _frames(
        self, record: TaskRecord, after: int | None, qualified: bool
    ) -> AsyncIterator[tuple[int, dict[str, Any]]]:
        """(sequence, envelope) of the run's workflow events after `after`, then its stop event.

        Sequence numbers are the task's event numbers (our SSE ids); `after=None` ("now") skips
        what already happened, `-1` replays everything still held.
        """
        cursor = NOW if after is None else max(after, 0)
        subscription = self.plane.subscribe(record.task_id, after=cursor)
        try:
            async for event in subscription:
                if event.kind == "result":
                    record = self.plane.task(record.task_id)
                envelope = _envelope(event, record)
                if envelope is None:
                    continue
                seq = event.seq or 0
                if not qualified:
                    envelope = {**envelope, "qualified_name": None}
                yield seq, envelope
                if event.kind == "result":
                    return
        finally:
            subscription.close()

    async def workflow_schema(self, request: Request) -> Schema:
        workflow = self._workflow(request.path_params["name"]).workflow
        return Schema(
            start=workflow.start_event_class.model_json_schema(),
            stop=workflow.stop_event_class.model_json_schema(),
        )

    async def workflow_events(self, request: Request) -> EventSchemas:
        workflow = self._workflow(request.path_params["name"]).workflow
        return EventSchemas(events=[e.model_json_schema() for e in workflow.events])

    async def representation(self, request: Request) -> Graph:
        workflow = self._workflow(request.path_params["name"]).workflow
        graph = get_workflow_representation(workflow)
        return Graph(graph=graph.model_dump(mode="json"))


# -- helpers -------------------------------------------------------------------------------------
def _iso(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).isoformat()


def _list_param(request: Request, name: str) -> list[str] | None:
    values = [v.strip() for v in request.query_params.getlist(name) if v.strip()]
    return values or None


def _cursor(after_sequence: str, last_event_id: str | None, sse: bool) -> int | None:
    """The protocol's resume point: an integer, `-1` for everything, or `now` (None)."""
    raw = last_event_id if (sse and last_event_id) else after_sequence
    if raw.strip().lower() == "now":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ApiError(400, f"after_sequence must be an integer or 'now', got {raw!r}") from None


def _envelope(event: TaskEvent, record: TaskRecord) -> dict[str, Any] | None:
    """A task event as the protocol's envelope; None for what the protocol does not show.

    The run's last event is its stop event, built from the finished task record.
    """
    if event.kind == "event":
        return event.envelope
    if event.kind == "result":
        if record.status is TaskStatus.COMPLETED:
            return LlamaAgentsProtocol._result(record).model_dump()
        return envelopes.failure_envelope(
            record.error, cancelled=record.status is TaskStatus.CANCELLED
        )
    return None


def routes(protocol: LlamaAgentsProtocol) -> list[BaseRoute]:
    p = protocol
    doc = {"tags": [TAG]}
    return [
        api_route(
            "/workflows", p.list_workflows, response=WorkflowsList, summary="List workflows", **doc
        ),
        api_route(
            "/workflows/{name}/run",
            p.run,
            methods=["POST"],
            body=RunBody,
            response=HandlerData,
            responses={500: HandlerData},
            errors=(400, 404, 409, 503),
            summary="Run a workflow and wait (200 completed, 500 otherwise; body: the handler)",
            **doc,
        ),
        api_route(
            "/workflows/{name}/run-nowait",
            p.run_nowait,
            methods=["POST"],
            body=RunBody,
            response=HandlerData,
            errors=(400, 404, 409, 503),
            summary="Start a workflow; answers its handler at once",
            **doc,
        ),
        api_route(
            "/workflows/{name}/schema",
            p.workflow_schema,
            response=Schema,
            errors=(404,),
            summary="Start and stop event schemas",
            **doc,
        ),
        api_route(
            "/workflows/{name}/events",
            p.workflow_events,
            response=EventSchemas,
            errors=(404,),
            summary="Event schemas of a workflow",
            **doc,
        ),
        api_route(
            "/workflows/{name}/representation",
            p.representation,
            response=Graph,
            errors=(404,),
            summary="A workflow's graph",
            **doc,
        ),
        api_route(
            "/results/{handler_id}",
            p.get_result,
            response=ResultData,
            responses={202: ResultData, 500: ResultData},
            errors=(404,),
            summary="A handler's result (deprecated in the protocol)",
            **doc,
        ),
        api_route(
            "/handlers",
            p.list_handlers,
            response=HandlersList,
            summary="List handlers (filters: status, workflow_name; repeatable)",
            **doc,
        ),
        api_route(
            "/handlers/{handler_id}",
            p.get_handler,
            response=HandlerData,
            responses={202: HandlerData, 500: HandlerData},
            errors=(404,),
            summary="A handler (202 running, 200 completed, 500 failed/cancelled)",
            **doc,
        ),
        api_route(
            "/handlers/{handler_id}/cancel",
            p.cancel,
            methods=["POST"],
            query=CancelQuery,
            response=Cancelled,
            errors=(404,),
            summary="Cancel a running handler (purge=true also deletes it)",
            **doc,
        ),
        api_route(
            "/events/{handler_id}",
            p.stream_events,
            query=EventsQuery,
            content={"text/event-stream": EventEnvelope, "application/x-ndjson": None},
            responses={204: None},
            errors=(400, 404),
            summary="A handler's events (SSE with id: sequence, or NDJSON); 204 once consumed",
            **doc,
        ),
        api_route(
            "/events/{handler_id}",
            p.send_event,
            methods=["POST"],
            body=SendEventBody,
            response=Sent,
            errors=(400, 404, 409),
            summary="Send an event into a running handler (e.g. a HumanResponseEvent)",
            **doc,
        ),
        api_route("/health", p.health, response=Health, errors=(503,), summary="Health", **doc),
    ]
