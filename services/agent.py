"""AgentService: a llama-index agent (FunctionAgent, ReActAgent, AgentWorkflow) as a service.

Each task runs the agent once with the task input as the user message. Chat memory is kept by
this service per session (tasks without a session share the default one) and handed to the agent
explicitly on every run (`memory=`): llama-index 0.14 can silently drop history that is only kept
in a reused Context (see DESIGN.md, pitfalls). A failed run leaves the memory as it was.

Tools named in the config are attached at start: tools of tool services as MetaServiceTools,
other services as ServiceAsTools, so the agent's tool calls cross the bus. The agent's events
(tool calls, tool results, streamed text) go to the control plane's event stream as they happen.
Tasks run one at a time by default (`max_concurrent_tasks: 1`), so they complete in order; while
stopped they wait, in order, on the running switch.

Size: one service type — per-session memory, the agent task API of the reference and the
streaming of agent events share the session table.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from typing import Any, Literal

import anyio
from llama_index.core.agent.workflow import AgentWorkflow, BaseWorkflowAgent
from llama_index.core.agent.workflow.workflow_events import (
    AgentInput,
    AgentOutput,
    AgentSetup,
    AgentStream,
)
from llama_index.core.agent.workflow.workflow_events import ToolCall as AgentToolCall
from llama_index.core.agent.workflow.workflow_events import ToolCallResult as AgentToolResult
from llama_index.core.base.llms.types import ChatMessage as LlamaChatMessage
from llama_index.core.base.llms.types import ToolCallBlock
from llama_index.core.memory import ChatMemoryBuffer
from llama_index.core.tools import AsyncBaseTool
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator
from starlette.requests import Request
from starlette.routing import BaseRoute
from workflows.events import Event, StopEvent

from gateway.jsonable import event_fields, to_jsonable
from gateway.messages import (
    ActionTypes,
    ChatMessage,
    NewTask,
    QueueMessage,
    TaskDefinition,
    TaskEvent,
    TaskResult,
    TaskStatus,
    WorkflowState,
)
from gateway.store import Store
from gateway.store.signing import SignatureError, sign, verify_saved
from gateway.web.errors import ApiError
from gateway.web.paging import Page, PageQuery, paginate
from gateway.web.routing import api_route, parse_body, parse_query
from services.base import BaseService, RunResponse, ServiceInfo
from services.calling import contain_steps
from services.run_events import stream_events
from services.tool.meta_tool import DEFAULT_TOOL_TIMEOUT, MetaServiceTool, ServiceAsTool

logger = logging.getLogger("services.agent")

DEFAULT_SESSION = ""
RETAINED_TASK_STATUSES = 256
# Events that only repeat the whole conversation back; the stream carries what is new instead.
_QUIET_EVENTS = (AgentInput, AgentSetup, StopEvent)


# -- HTTP models ----------------------------------------------------------------------------------
class AgentTaskInfo(BaseModel):
    task_id: str
    session_id: str | None = None
    status: TaskStatus


class AgentServiceInfo(ServiceInfo):
    num_tasks: int
    num_completed_tasks: int
    tasks: list[AgentTaskInfo]
    tools: list[str]
    sessions: int


class AgentRunRequest(BaseModel):
    """Body of `POST /run`: the user message, optionally in a session (unknown keys: 422)."""

    model_config = ConfigDict(extra="forbid")

    input: str = Field(min_length=1, max_length=1_000_000)
    session_id: str | None = Field(default=None, max_length=128)
    wait: float = Field(default=300.0, gt=0, le=3600, description="seconds to wait for the end")


class TaskCreated(BaseModel):
    task_id: str


class SessionQuery(BaseModel):
    session_id: str | None = Field(default=None, max_length=128)


class MessagesQuery(PageQuery):
    """The chat history is a list like any other: newest first unless `order=asc`."""

    session_id: str | None = Field(default=None, max_length=128)


class MessagePage(Page[ChatMessage]):
    """A page of chat messages."""


class ToggleRunning(BaseModel):
    state: Literal["running", "stopped"]


class RunningState(BaseModel):
    running: bool


class ResetDone(BaseModel):
    message: str
    sessions_cleared: int


# -- conversions ----------------------------------------------------------------------------------
def history_message(message: LlamaChatMessage) -> ChatMessage:
    """A llama-index chat message on the wire, tool calls included."""
    out = ChatMessage.from_llama(message)
    calls = [b for b in message.blocks if isinstance(b, ToolCallBlock)]
    if calls:
        out.additional_kwargs["tool_calls"] = [
            {"id": c.tool_call_id, "name": c.tool_name, "kwargs": to_jsonable(c.tool_kwargs)}
            for c in calls
        ]
    return out


def event_data(event: Event) -> dict[str, Any]:
    """The JSON payload of an agent event on the task's event stream."""
    if isinstance(event, AgentStream):
        return {
            "agent": event.current_agent_name,
            "delta": event.delta,
            "response": event.response,
            "tool_calls": [to_jsonable(t) for t in event.tool_calls],
        }
    if isinstance(event, AgentToolResult):
        return {
            "tool_name": event.tool_name,
            "tool_kwargs": to_jsonable(event.tool_kwargs),
            "tool_id": event.tool_id,
            "output": event.tool_output.content,
            "is_error": event.tool_output.is_error,
            "return_direct": event.return_direct,
        }
    if isinstance(event, AgentToolCall):
        return {
            "tool_name": event.tool_name,
            "tool_kwargs": to_jsonable(event.tool_kwargs),
            "tool_id": event.tool_id,
        }
    if isinstance(event, AgentOutput):
        return {
            "agent": event.current_agent_name,
            "response": event.response.content,
            "tool_calls": [to_jsonable(t) for t in event.tool_calls],
        }
    return event_fields(event)


class _Session:
    """One conversation: its messages and a lock so that its runs never interleave."""

    def __init__(self) -> None:
        self.messages: list[LlamaChatMessage] = []
        self.lock = anyio.Lock()
        self.generation = 0  # bumped by reset, so a run in flight cannot restore old history


# -- the service ----------------------------------------------------------------------------------
class AgentService(BaseService):
    """Serves one llama-index agent with per-session memory and tools across the bus."""

    service_type = "agent"

    agent: Any
    description: str = "A service that wraps a llama-index agent."
    tools: list[str] = Field(default_factory=list, description="services whose tools to attach")
    tool_timeout: float = Field(default=DEFAULT_TOOL_TIMEOUT, gt=0)
    max_concurrent_tasks: int = Field(default=1, ge=1)
    max_cached_sessions: int = Field(default=1024, ge=1)

    _sessions: OrderedDict[str, _Session] = PrivateAttr(default_factory=OrderedDict)
    _task_status: OrderedDict[str, AgentTaskInfo] = PrivateAttr(default_factory=OrderedDict)
    _own_tools: dict[int, list[Any]] = PrivateAttr(default_factory=dict)
    _attached: list[AsyncBaseTool] = PrivateAttr(default_factory=list)

    @field_validator("agent")
    @classmethod
    def _is_agent(cls, value: Any) -> Any:
        if not isinstance(value, (BaseWorkflowAgent, AgentWorkflow)):
            raise ValueError(
                "expected a llama-index agent (FunctionAgent, ReActAgent, CodeActAgent or "
                f"AgentWorkflow), got {type(value).__name__}"
            )
        return contain_steps(value)

    # -- start: tools across the bus --------------------------------------------------------------
    async def on_start(self) -> None:
        from services.tool.service import ToolService

        services = self.service_host.services
        remote: list[AsyncBaseTool] = []
        for name in self.tools:
            service = services.get(name)
            if name == self.service_name:
                raise ValueError(f"{self.service_name}: an agent cannot be its own tool")
            if service is None:
                raise LookupError(f"{self.service_name}: no service named {name!r} for its tools")
            if isinstance(service, ToolService):
                remote += MetaServiceTool.from_tool_service(
                    service, self.bus, timeout=self.tool_timeout
                )
            else:
                remote.append(
                    ServiceAsTool.from_service(service, self.bus, timeout=self.tool_timeout)
                )
        self._attach(remote)

    def _agents(self) -> list[BaseWorkflowAgent]:
        if isinstance(self.agent, AgentWorkflow):
            return list(self.agent.agents.values())
        return [self.agent]

    def _attach(self, remote: list[AsyncBaseTool]) -> None:
        """Give every agent its own tools plus `remote` (again on restart, never twice)."""
        for agent in self._agents():
            own = self._own_tools.setdefault(id(agent), list(agent.tools or []))
            names = [t.metadata.get_name() for t in [*own, *remote]]
            clashes = sorted({n for n in names if names.count(n) > 1})
            if clashes:
                raise ValueError(
                    f"{self.service_name}: tool name(s) {', '.join(clashes)} appear twice; "
                    "rename a tool or drop a service from `tools`"
                )
            agent.tools = [*own, *remote]
        self._attached = remote

    @property
    def attached_tool_names(self) -> list[str]:
        return [t.metadata.get_name() for t in self._attached]

    # -- HTTP -------------------------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        tags = ("agent",)
        toggle = api_route(
            "/toggle_agent_running",
            self._toggle,
            methods=["POST"],
            response=RunningState,
            summary='Pause or resume: `{"state": "running"|"stopped"}` (or `?state=`)',
            errors=(400, 422),
            tags=tags,
        )
        toggle.doc.body = ToggleRunning  # type: ignore[attr-defined]  # documented form
        return [
            *self.common_routes(),
            api_route(
                "/task",
                self._create_task,
                methods=["POST"],
                body=TaskDefinition,
                response=TaskCreated,
                summary="Create a task for this agent (runs in the background)",
                errors=(404, 409, 422, 503),
                tags=tags,
            ),
            api_route(
                "/messages",
                self._messages,
                query=MessagesQuery,
                response=MessagePage,
                summary="The chat history (default memory, or `?session_id=`), paged",
                errors=(409, 422),
                tags=tags,
            ),
            toggle,
            api_route(
                "/is_worker_running",
                self._is_running,
                response=RunningState,
                summary="Whether tasks are being run",
                tags=tags,
            ),
            api_route(
                "/reset_agent",
                self._reset,
                methods=["POST"],
                query=SessionQuery,
                response=ResetDone,
                summary="Clear the chat memory (all of it, or one `?session_id=`)",
                tags=tags,
            ),
            api_route(
                "/run",
                self._run_http,
                methods=["POST"],
                body=AgentRunRequest,
                response=RunResponse,
                summary="Ask the agent and wait for its answer",
                errors=(400, 404, 415, 422, 503),
                tags=tags,
            ),
        ]

    async def home(self) -> dict[str, Any]:
        base = await super().home()
        tasks = list(self._task_status.values())
        return AgentServiceInfo(
            **base,
            num_tasks=len(tasks),
            num_completed_tasks=sum(t.status is TaskStatus.COMPLETED for t in tasks),
            tasks=tasks,
            tools=self.attached_tool_names,
            sessions=len(self._sessions),
        ).model_dump(mode="json")

    async def _create_task(self, request: Request, body: TaskDefinition) -> TaskCreated:
        """Submit through the control plane so the task can be followed and awaited."""
        record = await self.service_host.control_plane.submit(body, self.service_name)
        return TaskCreated(task_id=record.task_id)

    async def _messages(self, request: Request, query: MessagesQuery) -> MessagePage:
        page = paginate(self.messages(query.session_id), query)
        return MessagePage(items=page.items, total=page.total)

    async def _toggle(self, request: Request) -> RunningState:
        """The reference took `state` as a query parameter; a JSON body works too."""
        if "state" in request.query_params:
            body = parse_query(request, ToggleRunning)
        else:
            body = await parse_body(request, ToggleRunning)
        self.set_running(body.state == "running")
        return RunningState(running=self.running)

    async def _is_running(self, request: Request) -> RunningState:
        return RunningState(running=self.running)

    async def _reset(self, request: Request, query: SessionQuery) -> ResetDone:
        cleared = self.reset(query.session_id)
        return ResetDone(message="Agent reset", sessions_cleared=cleared)

    async def _run_http(self, request: Request, body: AgentRunRequest) -> Any:
        task = TaskDefinition(input=body.input, session_id=body.session_id)
        return await self.run_and_wait(task, body.wait, sent=body.input)

    # -- memory -----------------------------------------------------------------------------------
    def _session(self, session_id: str | None) -> _Session:
        """The session's memory: cached here, else loaded (and verified) from the store."""
        key = session_id or DEFAULT_SESSION
        session = self._sessions.get(key)
        if session is None:
            history = self._load_history(key) if key != DEFAULT_SESSION else []
            session = self._sessions[key] = _Session()
            session.messages = history
            self._evict_idle_sessions()
        else:
            self._sessions.move_to_end(key)
        return session

    def _evict_idle_sessions(self) -> None:
        """Keep at most `max_cached_sessions` in memory; the store keeps the rest."""
        for key in list(self._sessions):
            if len(self._sessions) <= self.max_cached_sessions:
                return
            session = self._sessions[key]
            if key != DEFAULT_SESSION and not session.lock.locked():
                del self._sessions[key]

    def _store(self) -> Store | None:
        return self._host.control_plane.store if self._host is not None else None

    def _load_history(self, session_id: str) -> list[LlamaChatMessage]:
        store = self._store()
        payload = store.load_context(session_id, self.service_name) if store else None
        if payload is None:
            return []
        saved = WorkflowState.model_validate_json(payload)
        key = self.service_host.secret
        verify_saved(key, saved.state or "", saved.hash, session_id, self.service_name)
        return [LlamaChatMessage.model_validate(m) for m in json.loads(saved.state or "[]")]

    def _save_history(self, session_id: str | None, messages: list[LlamaChatMessage]) -> None:
        """Write a session's history through the store, signed like workflow contexts."""
        store = self._store()
        if not session_id or store is None:
            return
        state = json.dumps([m.model_dump(mode="json") for m in messages])
        saved = WorkflowState(
            hash=sign(self.service_host.secret, state), state=state, session_id=session_id
        )
        store.save_context(session_id, self.service_name, saved.model_dump_json())

    def _store_has_history(self, session_id: str) -> bool:
        store = self._store()
        return bool(store and store.load_context(session_id, self.service_name))

    def forget_session(self, session_id: str) -> None:
        """The control plane deleted the session: drop its cached memory too."""
        session = self._sessions.pop(session_id, None)
        if session is not None:
            session.generation += 1

    def messages(self, session_id: str | None = None) -> list[ChatMessage]:
        key = session_id or DEFAULT_SESSION
        session = self._sessions.get(key)
        if session is None and key != DEFAULT_SESSION:
            try:
                return [history_message(m) for m in self._load_history(key)]
            except SignatureError as exc:
                raise ApiError(409, f"session {key!r}: {exc}") from None
        return [history_message(m) for m in session.messages] if session else []

    def reset(self, session_id: str | None = None) -> int:
        """Forget one session's history, or every session's; answers how many were cleared."""
        targets = [session_id] if session_id is not None else list(self._sessions)
        cleared = 0
        for key in targets:
            session = self._sessions.get(key)
            if session is not None:
                # A run in flight (even the session's first) must not save what it saw: the
                # generation bump makes it drop its messages when it ends.
                in_flight = session.lock.locked()
                if session.messages or in_flight:
                    cleared += 1
                session.messages = []
                session.generation += 1
            elif key != DEFAULT_SESSION:
                cleared += int(self._store_has_history(key))
            self._save_history(key, [])
        return cleared

    def make_memory(self, history: list[LlamaChatMessage]) -> ChatMemoryBuffer:
        """A fresh memory holding `history`, sized to the agent's LLM."""
        llm = getattr(self._agents()[0], "llm", None)
        return ChatMemoryBuffer.from_defaults(chat_history=list(history), llm=llm)

    # -- bus --------------------------------------------------------------------------------------
    async def process_message(self, message: QueueMessage) -> None:
        if message.action == ActionTypes.NEW_TASK:
            task = message.body_as(NewTask).task
            self._track(task, TaskStatus.PENDING)
            self.spawn(task, lambda: self.execute(task))
        elif message.action == ActionTypes.NEW_TOOL_CALL:
            task, tool_call = self.task_as_tool_call(message)
            self._track(task, TaskStatus.PENDING)
            self.spawn(task, lambda: self.execute(task), tool_call=tool_call)
        else:
            raise ValueError(f"{self.service_name} does not handle {message.action!r}")

    def _track(self, task: TaskDefinition, status: TaskStatus) -> None:
        info = self._task_status.get(task.task_id)
        if info is None:
            info = AgentTaskInfo(task_id=task.task_id, session_id=task.session_id, status=status)
            self._task_status[task.task_id] = info
            while len(self._task_status) > RETAINED_TASK_STATUSES:
                self._task_status.popitem(last=False)
        info.status = status

    async def report_status(self, task_id: str, status: TaskStatus) -> None:
        if task_id in self._task_status:
            self._task_status[task_id].status = status
        await super().report_status(task_id, status)

    async def finish_task(self, result: TaskResult) -> None:
        if result.task_id in self._task_status:
            self._task_status[result.task_id].status = result.status
        await super().finish_task(result)

    # -- running ----------------------------------------------------------------------------------
    async def execute(self, task: TaskDefinition) -> TaskResult:
        """Run the agent on `task.input` with its session's memory; save it only on success."""
        session = self._session(task.session_id)
        async with session.lock:
            generation = session.generation
            memory = self.make_memory(session.messages)
            handler = self.agent.run(user_msg=task.input, memory=memory)
            tool_calls: list[dict[str, Any]] = []
            publish = task.task_id not in self._tool_calls
            try:
                async for event in stream_events(handler):
                    if isinstance(event, AgentToolResult):
                        tool_calls.append(event_data(event))
                    if publish and not isinstance(event, _QUIET_EVENTS):
                        await self.on_agent_event(task, event)
                output = await handler
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await handler.cancel_run(timeout=1.0)
                raise
            messages = list(memory.get_all())
            if session.generation == generation:
                session.messages = messages
                self._save_history(task.session_id, messages)
        text = _response_text(output)
        return TaskResult(
            task_id=task.task_id,
            result=text,
            history=[history_message(m) for m in messages],
            data={"response": text, "tool_calls": tool_calls, "session_id": task.session_id},
        )

    async def on_agent_event(self, task: TaskDefinition, event: Event) -> None:
        """Forward one agent event to the control plane's event stream for this task."""
        await self.publish_event(
            TaskEvent(
                task_id=task.task_id,
                kind="event",
                name=type(event).__name__,
                data=event_data(event),
            )
        )


def _response_text(output: Any) -> str:
    if isinstance(output, AgentOutput):
        return output.response.content or ""
    return str(output)
