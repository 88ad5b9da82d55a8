"""WorkflowService: a llama-index Workflow behind the bus and `POST /run`.

Each NEW_TASK runs `workflow.run(**kwargs)` in the host's task group, capped by a
CapacityLimiter (`max_concurrent_tasks`) and an optional `timeout`. Events the workflow writes to
its stream are forwarded to the control plane as they happen. A failure ends that task `failed`
with the error; it never becomes a "result" and never touches other tasks.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import anyio
from pydantic import (
    PrivateAttr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from workflows import Context, Workflow
from workflows.context.serializers import JsonSerializer
from workflows.errors import WorkflowTimeoutError
from workflows.events import Event, InputRequiredEvent, StartEvent, StopEvent

from gateway.jsonable import event_fields, result_text, to_jsonable
from gateway.messages import (
    ActionTypes,
    QueueMessage,
    TaskDefinition,
    TaskEvent,
    TaskResult,
    TaskStatus,
    WorkflowState,
)
from gateway.protocols.envelopes import envelope_of
from gateway.store.signing import SignatureError, sign, verify, verify_saved
from services.calling import contain_steps
from services.human.bridge import HumanBridge
from services.kwargs import KwargsRunRequest, KwargsService, decode_run_input
from services.prepared import prepare
from services.run_events import stream_events

logger = logging.getLogger("services.workflow")

MAX_EARLY_EVENTS = 64  # events held for one task whose run has not started yet
# A run parked at shutdown (waiting for a person) is saved as a context under this session key.
PARKED = "parked:"
RESUME = "resume_parked"  # the NewTask state flag with which recovery re-dispatches it


class WorkflowServiceConfig(BaseSettings):
    """The reference's settings object: `WORKFLOW_SERVICE_*` environment variables fill it."""

    model_config = SettingsConfigDict(env_prefix="WORKFLOW_SERVICE_")

    host: str
    port: int
    internal_host: str | None = None
    internal_port: int | None = None
    service_name: str
    description: str = "A service that wraps a llama-index workflow."
    running: bool = True
    step_interval: float = 0.1
    max_concurrent_tasks: int = 8
    raise_exceptions: bool = False


class _WorkflowEnvDefaults(BaseSettings):
    """The same variables, all optional: defaults for every workflow service of a config."""

    model_config = SettingsConfigDict(env_prefix="WORKFLOW_SERVICE_")

    internal_host: str | None = None
    internal_port: int | None = None
    description: str | None = None
    running: bool | None = None
    step_interval: float | None = None
    max_concurrent_tasks: int | None = None
    raise_exceptions: bool | None = None


def workflow_env_defaults() -> dict[str, Any]:
    return _WorkflowEnvDefaults().model_dump(exclude_none=True)


class WorkflowRunRequest(KwargsRunRequest):
    """Body of `POST /run`: `kwargs`, or the reference's `input` (a JSON object string)."""


class WorkflowService(KwargsService):
    """Serves one llama-index Workflow."""

    service_type = "workflow"
    run_request = WorkflowRunRequest
    run_summary = "Run the workflow and wait for its result"

    workflow: Any
    description: str = "A service that wraps a llama-index workflow."
    internal_host: str | None = None
    internal_port: int | None = None
    human_service: str | None = None

    _handlers: dict[str, Any] = PrivateAttr(default_factory=dict)
    # Runs that asked for input (InputRequiredEvent) with no human_service to ask: they show
    # `waiting_for_input` until an event is sent in.
    _awaiting_input: set[str] = PrivateAttr(default_factory=set)
    # Events sent to a task that is spawned but whose run does not exist yet (it reports
    # `running` first): delivered as soon as the run starts, never dropped.
    _early: dict[str, list[tuple[str, dict[str, Any]]]] = PrivateAttr(default_factory=dict)
    _human: HumanBridge | None = PrivateAttr(default=None)
    _parked: set[str] = PrivateAttr(default_factory=set)

    @field_validator("workflow")
    @classmethod
    def _is_workflow(cls, value: Any) -> Any:
        if not isinstance(value, Workflow):
            raise ValueError(f"expected a llama-index Workflow, got {type(value).__name__}")
        contain_steps(value)  # before prepare(), which caches the step table
        prepare(value)  # its steps are found once, not on every run
        return value

    @classmethod
    def from_config(cls, workflow: Workflow, config: WorkflowServiceConfig) -> WorkflowService:
        return cls(workflow=workflow, **config.model_dump())

    # -- bus ------------------------------------------------------------------------------------
    async def process_other(self, message: QueueMessage) -> None:
        if message.action == ActionTypes.SEND_EVENT:
            # Delivered inline (in the sender's task): let the run take its next step first, as
            # it could while a receive loop woke up, so a run that was just started is waiting.
            await anyio.lowlevel.checkpoint()
            task_id = str(message.data.get("task_id"))
            name, data = str(message.data.get("event")), message.data.get("data") or {}
            if self.send_event(task_id, name, data):
                if task_id in self._awaiting_input:
                    self._awaiting_input.discard(task_id)
                    await self.report_status(task_id, TaskStatus.RUNNING)
                return
            early = self._early.setdefault(task_id, []) if task_id in self._scopes else None
            if early is not None and len(early) < MAX_EARLY_EVENTS:
                early.append((name, data))
            else:
                logger.warning("event %s for task %s: the run is not active", name, task_id)
        else:
            await super().process_other(message)

    # -- running --------------------------------------------------------------------------------
    async def execute(self, task: TaskDefinition, state: dict[str, Any]) -> TaskResult:
        """Run the workflow once for `task`, forwarding stream events, and package the result."""
        if state.get(RESUME):
            return await self._resume(task)
        kwargs = decode_run_input(task.input)
        ctx = await self.restore_context(task)
        handler = self.workflow.run(ctx=ctx, **kwargs) if ctx else self.workflow.run(**kwargs)
        return await self._follow(task, handler)

    async def _follow(self, task: TaskDefinition, handler: Any) -> TaskResult:
        """Forward the run's stream events until it ends, then package its result."""
        self._handlers[task.task_id] = handler
        for name, data in self._early.pop(task.task_id, ()):
            self.send_event(task.task_id, name, data)
        try:
            async for event in stream_events(handler):
                if not isinstance(event, StopEvent):
                    await self.on_stream_event(task, handler, event)
            result = await handler
        except WorkflowTimeoutError as exc:
            error = str(exc) + self._waiting_note(task.task_id)
            return TaskResult(task_id=task.task_id, status=TaskStatus.TIMED_OUT, error=error)
        except BaseException:
            with anyio.CancelScope(shield=True):
                if not handler.done():
                    await handler.cancel_run(timeout=1.0)
            raise
        finally:
            self._handlers.pop(task.task_id, None)
        await self.save_context(task, handler.ctx)
        value = to_jsonable(result)
        data = {"result": value}
        if isinstance(result, StopEvent):  # a custom stop event is its own result
            data["stop_event"] = envelope_of(result)
        text = "" if result is None else result_text(result)
        return TaskResult(task_id=task.task_id, result=text, data=data, output=value)

    async def on_stream_event(self, task: TaskDefinition, handler: Any, event: Event) -> None:
        """Forward an event the workflow wrote to its stream (the control plane's SSE feed).

        With a `human_service`, an InputRequiredEvent also becomes a task there (its id is added
        to the forwarded event) and the answer comes back as a HumanResponseEvent.
        """
        data = event_fields(event)
        asks = isinstance(event, InputRequiredEvent)
        if self._human is not None and asks:
            data.update(await self._human.ask(task, handler, event))
        await self.publish_event(
            TaskEvent(
                task_id=task.task_id,
                kind="event",
                name=type(event).__name__,
                data=to_jsonable(data),
                envelope=envelope_of(event),
            )
        )
        if asks and self._human is None:
            # Nobody is asked on its behalf: the run waits for an event sent in over HTTP.
            self._awaiting_input.add(task.task_id)
            await self.report_status(task.task_id, TaskStatus.WAITING_FOR_INPUT)

    def timeout_message(self, task_id: str) -> str:
        return super().timeout_message(task_id) + self._waiting_note(task_id)

    def _waiting_note(self, task_id: str) -> str:
        if task_id not in self._awaiting_input:
            return ""
        return (
            " while waiting for input (it emitted an InputRequiredEvent and no event was sent "
            f"in; send one with POST /control_plane/tasks/{task_id}/events, or set human_service)"
        )

    # -- human in the loop ----------------------------------------------------------------------
    async def on_start(self) -> None:
        if self.human_service:
            if self.human_service not in self.service_host.services:
                logger.warning(
                    "%s: human_service %r is not in this gateway; reached over the bus if it "
                    "registers remotely",
                    self.service_name,
                    self.human_service,
                )
            self._human = HumanBridge(self, self.human_service)
            self._human.start()

    async def finish_task(self, result: TaskResult) -> None:
        """Report the end, then withdraw the run's unanswered questions from the human service."""
        if result.task_id in self._parked:  # stopped for a restart: it has no outcome yet
            self._parked.discard(result.task_id)
            self._early.pop(result.task_id, None)
            return
        self._awaiting_input.discard(result.task_id)  # read by timeout_message until here
        self._early.pop(result.task_id, None)
        await super().finish_task(result)
        if self._human is not None:
            await self._human.withdraw(result.task_id)

    # -- sessions (state across tasks) ----------------------------------------------------------
    async def restore_context(self, task: TaskDefinition) -> Context | None:
        """The session's saved Context, verified with HMAC-SHA256 before it is loaded."""
        if not task.session_id:
            return None
        host = self.service_host
        payload = host.control_plane.store.load_context(task.session_id, self.service_name)
        if payload is None:
            return None
        saved = WorkflowState.model_validate_json(payload)
        verify_saved(host.secret, saved.state or "", saved.hash, task.session_id, self.service_name)
        return Context.from_dict(self.workflow, json.loads(saved.state or "{}"), JsonSerializer())

    async def save_context(self, task: TaskDefinition, ctx: Context | None) -> None:
        """Serialize the Context as JSON (never pickle), sign it, write it through the store."""
        if not task.session_id or ctx is None:
            return
        if self.service_host.control_plane.sessions.get(task.session_id) is None:
            return  # the session was deleted while this task ran: its state goes with it
        try:
            state = json.dumps(ctx.to_dict(serializer=JsonSerializer()))
        except Exception as exc:
            raise ValueError(f"the workflow context cannot be saved as JSON: {exc}") from None
        host = self.service_host
        saved = WorkflowState(
            hash=sign(host.secret, state),
            state=state,
            session_id=task.session_id,
            task_id=task.task_id,
        )
        host.control_plane.store.save_context(
            task.session_id, self.service_name, saved.model_dump_json()
        )

    # -- parking a run that waits for a person across a restart ---------------------------------
    async def park(self, task_id: str) -> bool:
        """Shutdown with a durable store: a run that waits only for a person is saved (its
        context, signed, and its questions) and stopped without an outcome; `resume` goes on
        from there after the restart. False when the run cannot be parked (it then ends as any
        other run at shutdown)."""
        handler = self._handlers.get(task_id)
        store = self.service_host.control_plane.store
        if handler is None or handler.ctx is None or self._human is None or not store.durable:
            return False
        questions = self._human.questions(task_id)
        if not questions:
            return False
        try:
            context = json.dumps(handler.ctx.to_dict(serializer=JsonSerializer()))
        except Exception as exc:
            logger.warning("run %s cannot be parked: %s", task_id, exc)
            return False
        # Signed whole: a question's text is what the person approves, so it is covered too.
        record = json.dumps({"context": context, "questions": questions})
        saved = WorkflowState(
            hash=sign(self.service_host.secret, record), state=record, task_id=task_id
        )
        store.save_context(PARKED + task_id, self.service_name, saved.model_dump_json())
        self._parked.add(task_id)
        scope = self._scopes.get(task_id)
        if scope is not None:
            scope.cancel()
        return True

    def can_resume(self, task_id: str) -> bool:
        store = self.service_host.control_plane.store
        return store.load_context(PARKED + task_id, self.service_name) is not None

    async def _resume(self, task: TaskDefinition) -> TaskResult:
        """A parked run, after the restart: its context restored and its questions asked again."""
        store = self.service_host.control_plane.store
        key = PARKED + task.task_id
        payload = store.load_context(key, self.service_name)
        if payload is None or self._human is None:
            raise RuntimeError("the run waiting for a person was not saved at shutdown")
        try:
            ctx, questions = self._read_parked(payload)
        except Exception:
            store.delete_session(key)  # refused once: it is never tried again
            raise
        handler = self.workflow.run(ctx=ctx)
        # The restored run does not emit its question again: ask it from what was saved.
        for fields in questions:
            await self._human.ask_fields(task, handler, fields)
        store.delete_session(key)  # its parked context, now live again
        return await self._follow(task, handler)

    def _read_parked(self, payload: str) -> tuple[Context, list[dict[str, Any]]]:
        """The parked context and questions, loaded only once their signature verifies."""
        try:
            saved = WorkflowState.model_validate_json(payload)
        except ValidationError:
            raise SignatureError(
                "the parked run's saved state is unreadable; refusing to load it"
            ) from None
        verify(self.service_host.secret, saved.state or "", saved.hash)
        try:
            record = json.loads(saved.state or "")
            ctx = Context.from_dict(self.workflow, json.loads(record["context"]), JsonSerializer())
            questions = [dict(q) for q in record["questions"]]
        except Exception as exc:
            raise RuntimeError(f"the parked run's saved state cannot be restored: {exc}") from None
        return ctx, questions

    # -- events sent into a running workflow ----------------------------------------------------
    def event_types(self) -> dict[str, type[Event]]:
        """Event classes the workflow's steps accept (start events excluded)."""
        types: dict[str, type[Event]] = {}
        for fn in self.workflow._get_steps().values():
            for event_type in fn._step_config.accepted_events:
                if not issubclass(event_type, StartEvent):
                    types[event_type.__name__] = event_type
        return types

    def waited_event_types(self, task_id: str) -> dict[str, type[Event]]:
        """Event classes a running task waits for with `ctx.wait_for_event` (no step lists them)."""
        handler = self._handlers.get(task_id)
        if handler is None or handler.ctx is None:
            return {}
        try:
            snapshot = handler.ctx.to_dict(include_state=False)
        except Exception:
            return {}
        types: dict[str, type[Event]] = {}
        for worker in (snapshot.get("workers") or {}).values():
            for waiter in worker.get("collected_waiters") or []:
                module, _, name = str(waiter.get("waiting_for_event", "")).rpartition(".")
                event_type = getattr(sys.modules.get(module), name, None)
                if isinstance(event_type, type) and issubclass(event_type, Event):
                    types[name] = event_type
        return types

    def build_event(self, name: str, data: dict[str, Any], task_id: str | None = None) -> Event:
        """Validate an event to send into a run: unknown type or bad fields raise ValueError.

        Accepted: what the workflow's steps accept and, for a running `task_id`, what it waits
        for with `ctx.wait_for_event`.
        """
        types = self.event_types()
        if name not in types and task_id is not None:
            types.update(self.waited_event_types(task_id))
        if name not in types:
            known = ", ".join(sorted(types)) or "none"
            raise ValueError(f"{self.service_name} accepts no event {name!r} (accepted: {known})")
        try:
            return types[name].model_validate(data)
        except ValidationError as exc:
            raise ValueError(f"invalid {name}: {exc.errors(include_url=False)}") from None

    def send_event(self, task_id: str, name: str, data: dict[str, Any]) -> bool:
        handler = self._handlers.get(task_id)
        if handler is None or handler.ctx is None:
            return False
        handler.ctx.send_event(self.build_event(name, data, task_id))
        return True
