"""Every `/control_plane/...` endpoint, each handler next to its route.

Our API plus the reference system's paths and shapes (see DESIGN.md, "Compatibility"), so a
client of that system works with `<gateway>/control_plane` as its base URL.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from gateway.control_plane.plane import ControlPlane
from gateway.control_plane.remote import accept_remote_message
from gateway.control_plane.sessions import SessionRecord
from gateway.control_plane.tasks import Task, TaskRecord, encode_input
from gateway.messages import (
    ID_PATTERN,
    QueueMessage,
    ServiceDefinition,
    SessionDefinition,
    TaskDefinition,
    TaskResult,
    TaskStatus,
)
from gateway.store import TaskFilter
from gateway.web import cursor
from gateway.web.errors import ApiError
from gateway.web.paging import CursorPage, CursorQuery, paginate_after
from gateway.web.routing import JsonBytes, api_route
from gateway.web.sse import resume_after, sse_response


# -- request / response models -------------------------------------------------------------------
class TaskCreate(BaseModel):
    """`input` is the task text; for workflows a JSON object (or its JSON string) of run kwargs."""

    model_config = ConfigDict(extra="forbid")

    input: str | dict[str, Any] = Field(default="", description="shown back exactly as sent")
    service: str | None = Field(default=None, max_length=128)
    session_id: str | None = Field(default=None, max_length=128)
    task_id: str | None = Field(default=None, pattern=ID_PATTERN)

    def definition(self) -> TaskDefinition:
        extra = {"task_id": self.task_id} if self.task_id else {}
        return TaskDefinition(
            input=encode_input(self.input),
            session_id=self.session_id,
            agent_id=self.service,
            **extra,
        )


class TaskAccepted(BaseModel):
    task_id: str
    session_id: str | None = None
    service: str
    status: TaskStatus


class TaskPage(CursorPage[Task]):
    """A page of tasks."""


class SessionPage(CursorPage[SessionRecord]):
    """A page of sessions."""


class TaskListQuery(CursorQuery):
    sort: Literal["created_at", "started_at", "finished_at"] = Field(  # type: ignore[assignment]
        default="created_at", description="field to order by (unset times sort as oldest)"
    )
    status: TaskStatus | None = None
    service: str | None = Field(default=None, max_length=128)
    session_id: str | None = Field(default=None, max_length=128)

    def matches(self, record: TaskRecord) -> bool:
        return (
            (self.status is None or record.status == self.status)
            and (self.service is None or record.service == self.service)
            and (self.session_id is None or record.session_id == self.session_id)
        )


class WaitQuery(BaseModel):
    wait: float = Field(default=0.0, ge=0, le=3600, description="seconds to wait for the end")


class EventsQuery(BaseModel):
    """Resume after an event: `after` or the `Last-Event-ID` header (the larger wins)."""

    after: int | None = Field(default=None, ge=0, description="resume after this event id")


class FeedQuery(EventsQuery):
    service: str | None = Field(default=None, max_length=128, description="only this service")


class CompatPageQuery(BaseModel):
    """The reference-compatible session list: a dict, so only limit/offset."""

    limit: int = Field(default=1000, ge=1, le=10000)
    offset: int = Field(default=0, ge=0)


class Deregister(BaseModel):
    service_name: str = Field(min_length=1, max_length=128)


class SessionCreated(BaseModel):
    session_id: str


class SessionDeleted(BaseModel):
    deleted: str
    cancelled: list[str] = Field(
        description="its tasks that had not ended: queued ones never run, the running one is "
        "stopped; all end `cancelled` with the reason"
    )


class SessionTaskCreate(TaskDefinition):
    """A TaskDefinition (reference form) or our `{input, service}` form."""

    service: str | None = Field(default=None, max_length=128)
    input: str | dict[str, Any] = ""  # type: ignore[assignment]

    @field_validator("input", mode="after")
    @classmethod
    def _encode(cls, value: str | dict[str, Any]) -> str:
        return value if isinstance(value, str) else json.dumps(value)


class SessionTaskInfo(TaskDefinition):
    status: TaskStatus


class SessionState(BaseModel):
    """A session's state, read and written in this one shape (a POST merges its keys)."""

    model_config = ConfigDict(extra="forbid")

    state: dict[str, Any]


class EventSend(BaseModel):
    event: str = Field(min_length=1, max_length=200, description="event class name")
    data: dict[str, Any] = Field(default_factory=dict)


class SessionReset(BaseModel):
    session_id: str
    services: list[str] = Field(description="services whose saved state was forgotten")


class GatewayAck(BaseModel):
    accepted: str


def _path(request: Request, name: str) -> str:
    return request.path_params[name]


def routes(cp: ControlPlane) -> list[BaseRoute]:
    """The control plane's routes, relative to `/control_plane`."""

    # -- services -------------------------------------------------------------------------
    async def list_services(request: Request) -> dict[str, Any]:
        """Discovered services: name -> ServiceDefinition."""
        return {k: v.model_dump(mode="json") for k, v in cp.registry.definitions().items()}

    async def get_service(request: Request) -> ServiceDefinition:
        """One service's definition."""
        name = _path(request, "name")
        entry = cp.registry.get(name)
        if entry is None:
            raise ApiError(404, f"no service named {name!r}")
        return entry.definition

    async def register_service(request: Request, body: ServiceDefinition) -> ServiceDefinition:
        """A service running in another process joins (needs a service token; see README)."""
        return cp.register_remote(body, request.state.service_owner).definition

    async def deregister_service(request: Request, body: Deregister) -> dict[str, str]:
        """A remote service leaves (with the token it registered with)."""
        cp.deregister_remote(body.service_name, request.state.service_owner)
        return {"deregistered": body.service_name}

    async def process_message(request: Request, body: QueueMessage) -> GatewayAck:
        """A remote service posts a message: its tasks' results and events, or tool calls.

        Needs a service token. Results and events are accepted only for running tasks that were
        dispatched to a service registered with the same token, results only with a terminal
        status; tasks themselves are created through the task API, never here.
        """
        await accept_remote_message(cp, body, request.state.service_owner)
        return GatewayAck(accepted=body.id_)

    # -- tasks ----------------------------------------------------------------------------
    async def create_task(request: Request, body: TaskCreate) -> TaskAccepted:
        """Submit a task; it runs in the background. Poll, long-poll or stream it by id."""
        record = await cp.submit(body.definition(), sent=body.input)
        return TaskAccepted(
            task_id=record.task_id,
            session_id=record.session_id,
            service=record.service,
            status=record.status,
        )

    async def list_tasks(request: Request, query: TaskListQuery) -> TaskPage:
        """Tasks, newest first, filtered (`status`, `service`, `session_id`) and paged."""
        sort = query.sort
        after = cursor.decode_time(query.after)
        stored = await cp.store.list_tasks(
            TaskFilter(
                status=query.status.value if query.status else None,
                service=query.service,
                session_id=query.session_id,
                sort=sort,
                descending=query.descending,
                limit=query.limit + 1,  # one more: is there a next page?
                offset=query.offset,
                after=after,
            )
        )
        if stored is not None:  # a durable store: every task, from before a restart too
            records, total = stored
            page = records[: query.limit]
            following = None
            if len(records) > query.limit:
                last = page[-1]
                following = cursor.encode(getattr(last, sort) or 0.0, last.task_id)
            return TaskPage(items=[r.view() for r in page], total=total, next=following)
        page = paginate_after(
            (r for r in cp.tasks.all() if query.matches(r)),
            query,
            lambda r: (getattr(r, sort) or 0.0, r.task_id),
        )
        return TaskPage(items=[r.view() for r in page.items], total=page.total, next=page.next)

    async def get_task(request: Request) -> JsonBytes:
        """A task's status and, once it ended, its result or error."""
        return JsonBytes((await cp.find_task(_path(request, "task_id"))).view_json())

    async def task_result(request: Request, query: WaitQuery) -> Response:
        """Long-poll: answers as soon as the task ends (200), or after `wait` seconds (202)."""
        record = await cp.wait(_path(request, "task_id"), query.wait)
        return Response(
            record.view_json(),
            200 if record.is_terminal else 202,
            media_type="application/json",
        )

    async def cancel_task(request: Request) -> JsonBytes:
        """Cancel a task that has not ended (409 if it has)."""
        return JsonBytes((await cp.cancel(_path(request, "task_id"))).view_json())

    async def task_events(request: Request, query: EventsQuery) -> Response:
        """Server-Sent Events: what happened so far, then live events, then the result.

        Every frame's `id:` is the event's seq; resume with `Last-Event-ID` or `after`. Events
        no longer held are announced by a `gap` event first.
        """
        after = resume_after(request, query.after)
        return sse_response(await cp.open_subscription(_path(request, "task_id"), after))

    async def all_events(request: Request, query: FeedQuery) -> Response:
        """Server-Sent Events of every task's status changes (and human queue changes).

        Endless; ids are positions in this feed. Resume with `Last-Event-ID` or `after`.
        """
        after = resume_after(request, query.after)
        keep = None
        if query.service is not None:
            needle = query.service

            def keep(raw: str) -> bool:
                return json.loads(raw).get("data", {}).get("service") == needle

        return sse_response(await cp.open_feed(after, keep), endless=True)

    async def send_task_event(request: Request, body: EventSend) -> Response:
        """Send an event into a running workflow (validated against its event types)."""
        await cp.send_event(_path(request, "task_id"), body.event, body.data)
        return JSONResponse({"sent": body.event}, 202)

    # -- sessions -------------------------------------------------------------------------
    async def create_session(request: Request) -> Response:
        """Create a session (201 with `{session_id}`)."""
        record = await cp.new_session()
        return JSONResponse({"session_id": record.session_id}, 201)

    async def create_session_compat(request: Request) -> Response:
        """Reference form: the new session id as a JSON string."""
        return JSONResponse((await cp.new_session()).session_id)

    async def list_sessions(request: Request, query: CompatPageQuery) -> dict[str, Any]:
        """Reference form: id -> SessionDefinition, oldest first (paged by limit/offset)."""
        stored = await cp.store.list_sessions(False, query.offset, query.limit)
        sessions = stored[0] if stored is not None else cp.sessions.page(query.limit, query.offset)
        return {s.session_id: s.definition().model_dump(mode="json") for s in sessions}

    async def page_sessions(request: Request, query: CursorQuery) -> SessionPage:
        """Sessions, newest first, paged: the `{items, total}` form of every list."""
        after = cursor.decode_time(query.after)
        stored = await cp.store.list_sessions(
            query.descending, query.offset, query.limit + 1, after
        )
        if stored is not None:  # a shared store: every replica's sessions
            records, total = stored
            items = records[: query.limit]
            following = None
            if len(records) > query.limit:
                following = cursor.encode(items[-1].created_at, items[-1].session_id)
            return SessionPage(items=items, total=total, next=following)
        page = paginate_after(cp.sessions.all(), query, lambda s: (s.created_at, s.session_id))
        return SessionPage(items=page.items, total=page.total, next=page.next)

    async def get_session(request: Request) -> SessionDefinition:
        """One session."""
        return (await cp.find_session(_path(request, "session_id"))).definition()

    async def delete_session(request: Request) -> SessionDeleted:
        """Delete a session and its saved state; its unfinished tasks end `cancelled`."""
        session_id = _path(request, "session_id")
        await cp.find_session(session_id)  # (a shared store: brings it into the cache)
        cancelled = await cp.delete_session(session_id)
        return SessionDeleted(deleted=session_id, cancelled=cancelled)

    async def create_session_task(request: Request, body: SessionTaskCreate) -> Response:
        """Run a task in this session; answers the new task id as a JSON string."""
        session_id = _path(request, "session_id")
        await cp.find_session(session_id)
        task = TaskDefinition(
            input=body.input,
            task_id=body.task_id,
            session_id=session_id,
            agent_id=body.service or body.agent_id,
        )
        record = await cp.submit(task)
        return JSONResponse(record.task_id)

    async def list_session_tasks(request: Request) -> list[SessionTaskInfo]:
        """The session's tasks in submission order, each with its status."""
        session = await cp.find_session(_path(request, "session_id"))
        return [
            SessionTaskInfo(**record.definition().model_dump(), status=record.status)
            for record in await cp.session_tasks(session)
        ]

    async def current_task(request: Request) -> Response:
        """The oldest task of the session that has not ended, or null."""
        session = await cp.find_session(_path(request, "session_id"))
        for record in await cp.session_tasks(session):
            if not record.is_terminal:
                return JSONResponse(record.definition().model_dump(mode="json"))
        return JSONResponse(None)

    async def session_task_result(request: Request) -> Response:
        """Reference form: the TaskResult once the task ended, null before."""
        session = await cp.find_session(_path(request, "session_id"))
        task_id = _path(request, "task_id")
        if task_id not in session.task_ids:
            raise ApiError(404, f"session {session.session_id!r} has no task {task_id!r}")
        record = await cp.find_task(task_id)
        if not record.is_terminal:
            return JSONResponse(None)
        result = record.result or TaskResult(
            task_id=task_id, status=record.status, error=record.error
        )
        return JSONResponse(result.model_dump(mode="json"))

    async def get_state(request: Request) -> Response:
        """The session's state, as `{"state": {...}}` (serialized off the event loop)."""
        body = await cp.states.read(_path(request, "session_id"))
        return Response(body, media_type="application/json")

    async def merge_state(request: Request, body: SessionState) -> Response:
        """Merge the keys of `{"state": {...}}` into the session's state; answers all of it.

        413 when the merged state would pass `max_state_bytes` (nothing changes then).
        """
        merged = await cp.states.merge(_path(request, "session_id"), body.state)
        return Response(merged, media_type="application/json")

    async def reset_session(request: Request) -> SessionReset:
        """Forget the session's saved workflow contexts and agent memories (tasks and state
        stay): the way out when saved state fails its signature check."""
        session_id = _path(request, "session_id")
        await cp.find_session(session_id)
        services = cp.reset_session(session_id)
        await cp.reset_done()
        return SessionReset(session_id=session_id, services=services)

    sid = "/sessions/{session_id}"
    tid = "/tasks/{task_id}"
    tags = ("control plane",)
    return [
        api_route("/services", list_services, tags=tags),
        api_route(
            "/services/register",
            register_service,
            methods=["POST"],
            body=ServiceDefinition,
            response=ServiceDefinition,
            errors=(400, 401, 403, 409, 422),
            tags=tags,
        ),
        api_route(
            "/services/deregister",
            deregister_service,
            methods=["POST"],
            body=Deregister,
            errors=(400, 401, 403, 404, 409, 422),
            tags=tags,
        ),
        api_route(
            "/services/{name}", get_service, response=ServiceDefinition, errors=(404,), tags=tags
        ),
        api_route(
            "/process_message",
            process_message,
            methods=["POST"],
            body=QueueMessage,
            response=GatewayAck,
            errors=(400, 401, 403, 404, 409, 422, 503),
            tags=tags,
        ),
        api_route(
            "/tasks",
            create_task,
            methods=["POST"],
            body=TaskCreate,
            response=TaskAccepted,
            status_code=202,
            errors=(404, 409, 422, 503),
            tags=tags,
        ),
        api_route(
            "/tasks", list_tasks, query=TaskListQuery, response=TaskPage, errors=(422,), tags=tags
        ),
        api_route(tid, get_task, response=Task, errors=(404,), tags=tags),
        api_route(
            tid + "/result",
            task_result,
            query=WaitQuery,
            response=Task,
            responses={202: Task},
            errors=(404,),
            tags=tags,
        ),
        api_route(
            tid + "/cancel",
            cancel_task,
            methods=["POST"],
            response=Task,
            errors=(404, 409),
            tags=tags,
        ),
        api_route("/events", all_events, query=FeedQuery, errors=(422,), tags=tags, stream=True),
        api_route(
            tid + "/events",
            task_events,
            query=EventsQuery,
            errors=(404, 422),
            tags=tags,
            stream=True,
        ),
        api_route(
            tid + "/events",
            send_task_event,
            methods=["POST"],
            body=EventSend,
            status_code=202,
            errors=(404, 409, 422),
            tags=tags,
        ),
        api_route(
            "/sessions",
            create_session,
            methods=["POST"],
            response=SessionCreated,
            status_code=201,
            tags=tags,
        ),
        api_route("/sessions/create", create_session_compat, methods=["POST"], tags=tags),
        api_route("/sessions", list_sessions, query=CompatPageQuery, errors=(422,), tags=tags),
        api_route(
            "/sessions/list",
            page_sessions,
            query=CursorQuery,
            response=SessionPage,
            errors=(422,),
            tags=tags,
        ),
        api_route(sid, get_session, response=SessionDefinition, errors=(404,), tags=tags),
        api_route(
            sid,
            delete_session,
            methods=["DELETE"],
            response=SessionDeleted,
            errors=(404,),
            tags=tags,
        ),
        api_route(
            sid + "/delete",
            delete_session,
            methods=["POST"],
            response=SessionDeleted,
            errors=(404,),
            tags=tags,
        ),
        api_route(
            sid + "/tasks",
            create_session_task,
            methods=["POST"],
            body=SessionTaskCreate,
            errors=(404, 409, 422, 503),
            tags=tags,
        ),
        api_route(
            sid + "/tasks",
            list_session_tasks,
            response=list[SessionTaskInfo],
            errors=(404,),
            tags=tags,
        ),
        api_route(sid + "/current_task", current_task, errors=(404,), tags=tags),
        api_route(sid + "/tasks/{task_id}/result", session_task_result, errors=(404,), tags=tags),
        api_route(
            sid + "/reset",
            reset_session,
            methods=["POST"],
            response=SessionReset,
            errors=(404,),
            tags=tags,
        ),
        api_route(sid + "/state", get_state, response=SessionState, errors=(404,), tags=tags),
        api_route(
            sid + "/state",
            merge_state,
            methods=["POST"],
            body=SessionState,
            response=SessionState,
            errors=(404, 413, 422),
            tags=tags,
        ),
    ]
