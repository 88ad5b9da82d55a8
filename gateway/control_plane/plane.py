"""Orchestration: accept tasks, route them to services over the bus, record how they end.

The control plane is itself a bus consumer (`type == "control_plane"`): services answer with
COMPLETED_TASK and report progress with TASK_STREAM. Tasks of one session run in submission
order per service (a lane); other tasks go straight to their service.

Size: one class on purpose — accept, dispatch, lanes and the terminal transition share the
task table's invariants (exactly one terminal state), and splitting them would spread those over
modules.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio
from anyio.abc import TaskGroup

from gateway.bus import BusError, BusFull, Consumer, NoConsumer
from gateway.bus.http_remote import RemoteConsumer
from gateway.bus.memory import MessageBus
from gateway.contain import describe, is_our_cancellation
from gateway.control_plane.events import Deferred, FeedStatus, Subscription, TaskEventHub
from gateway.control_plane.registry import RegisteredService, ServiceRegistry
from gateway.control_plane.remote import RemoteAccess, remote_publisher
from gateway.control_plane.sessions import SessionRecord, SessionTable
from gateway.control_plane.state import SessionStates
from gateway.control_plane.tasks import TaskRecord, TaskTable
from gateway.messages import (
    CONTROL_PLANE_NAME,
    ActionTypes,
    NewTask,
    QueueMessage,
    ServiceDefinition,
    TaskDefinition,
    TaskEvent,
    TaskResult,
    TaskStatus,
)
from gateway.store import Store, StoreUnavailable
from gateway.store.memory import MemoryStore
from gateway.web.errors import ApiError

logger = logging.getLogger("gateway.control_plane.plane")

LaneKey = tuple[str, str]


class ControlPlane:
    publisher_id = CONTROL_PLANE_NAME

    def __init__(
        self,
        bus: MessageBus,
        registry: ServiceRegistry | None = None,
        *,
        default_service: str | None = None,
        store: Store | None = None,
        events: TaskEventHub | None = None,
        retain_finished: int = 10_000,
    ) -> None:
        self.bus = bus
        self.registry = registry or ServiceRegistry()
        self.default_service = default_service
        self.store: Store = store or MemoryStore()
        self.events = events or TaskEventHub()
        self.tasks = TaskTable(retain_finished=retain_finished)
        self.sessions = SessionTable()
        self.accepting = True
        self._stopped = False
        self._lanes: dict[LaneKey, deque[str]] = {}
        self._lane_busy: dict[LaneKey, str] = {}  # lane -> the task holding it
        self._task_group: TaskGroup | None = None
        # Set when the last active task ends; only `drain` waits on it, each time on a new one.
        self._idle = anyio.Event()
        self.on_task_end: list[Callable[[TaskRecord], None]] = []
        # Local services take their tasks by call (`_local_taker`); off where the bus is shared.
        self.dispatch_by_call = True
        self.tracing: Any = None  # gateway.observe.tracing.Tracing when tracing is on
        self.remote = RemoteAccess(None)  # service tokens and allow list (set by the app)
        self.states = SessionStates(self)  # merges: bounded, serialized off the loop

    # -- lifecycle ---------------------------------------------------------------------------
    def consumer(self) -> Consumer:
        # Inline: handling a result or a progress event only updates tables and wakes waiters,
        # so it runs in the publisher's task (it yields once after a stream event that has
        # readers, see `process_message`).
        return Consumer(
            message_type=CONTROL_PLANE_NAME, handler=self.process_message, id_="cp", inline=True
        )

    def start(self, task_group: TaskGroup) -> None:
        self._task_group = task_group

    async def open_store(self, task_group: TaskGroup) -> None:
        self.store.add_sweep_listener(self._swept)
        await self.store.open(task_group)
        for session in self.store.load_sessions():
            self.sessions.add(session)

    def _swept(self, rows: list[tuple]) -> None:
        """The store's retention deleted these finished tasks: forget them here too (so they
        answer 404), with their events and their place in their sessions' task lists."""
        by_session: dict[str, set[str]] = {}
        for task_id, session_id in rows:
            self.tasks.drop_finished(task_id)
            self.events.forget(task_id)
            if session_id:
                by_session.setdefault(session_id, set()).add(task_id)
        for session_id, gone in by_session.items():
            session = self.sessions.get(session_id)
            if session is not None:
                session.task_ids = [t for t in session.task_ids if t not in gone]
                self.store.save_session(session)

    async def recover(self) -> None:
        """After a restart: accepted-but-unstarted tasks run; interrupted ones end failed."""
        for record in self.store.unfinished_tasks():
            if record.task_id in self.tasks:
                continue
            # Its event numbering goes on from where it was (readers resume by seq); its first
            # event, `pending` = 1, was published after the record was first committed.
            self.events.open(record.task_id, max(record.last_seq, 1))
            resumable = self._resumable(record)
            if (record.status is TaskStatus.PENDING or resumable) and (
                record.service in self.registry
            ):
                self.tasks.add(record)
                if self.tracing is not None:  # continues the trace the record carries
                    self.tracing.start_task(record)
                # A run parked at shutdown while it waited for a person goes on from there.
                state = {"resume_parked": True} if resumable else None
                await self._route(record.definition(), state, wait=True)
            else:
                self.tasks.add(record)
                await self._end(record.task_id, TaskStatus.FAILED, error="interrupted by restart")

    def _resumable(self, record: TaskRecord) -> bool:
        if record.status is not TaskStatus.WAITING_FOR_HUMAN:
            return False
        entry = self.registry.get(record.service)
        can_resume = getattr(entry.service, "can_resume", None) if entry is not None else None
        return bool(can_resume and can_resume(record.task_id))

    async def _park_waiting(self) -> int:
        """With a durable store, runs that wait only for a person are parked by their service
        (saved, then stopped without an outcome) instead of being waited for or cancelled: they
        are still waiting after the restart. Returns how many were parked."""
        if not self.store.durable:
            return 0
        parked = 0
        for record in list(self.tasks.active()):
            if record.status is not TaskStatus.WAITING_FOR_HUMAN:
                continue
            entry = self.registry.get(record.service)
            park = getattr(entry.service, "park", None) if entry is not None else None
            if park is None or not await park(record.task_id):
                continue
            self.tasks.discard(record.task_id)  # stays `waiting_for_human` in the store
            self.events.close(record.task_id)
            parked += 1
        self._set_idle_if_quiet()
        return parked

    def stop_accepting(self) -> None:
        self.accepting = False

    async def drain(self, grace: float) -> list[str]:
        """Let in-flight tasks end within `grace` seconds, then cancel the rest.

        With a durable store, tasks that never started are not cancelled: they stay pending in
        the store, and `recover()` runs them after the restart.
        """
        self.stop_accepting()
        parked = await self._park_waiting()
        if parked:
            logger.info(
                "parked %d run(s) waiting for a person; they resume after the restart", parked
            )
        if self.tasks.active_count():
            logger.info(
                "waiting up to %ss for %d task(s) to finish", grace, self.tasks.active_count()
            )
        with anyio.move_on_after(grace):
            while self.tasks.active_count():
                self._idle = anyio.Event()
                await self._idle.wait()
        # From here on nothing moves: no lane releases its next task, late reports are ignored.
        self._stopped = True
        leftover = []
        for record in self.tasks.active():
            if self.store.durable and record.status is TaskStatus.PENDING:
                # Never started: it stays accepted in the store and runs after the restart.
                self.events.close(record.task_id)
                continue
            leftover.append(record.task_id)
            await self._end(record.task_id, TaskStatus.CANCELLED, error="cancelled at shutdown")
        return leftover

    # -- services ----------------------------------------------------------------------------
    def register_local(self, definition: ServiceDefinition, service: Any, max_queued: int) -> None:
        self.registry.add(RegisteredService(definition, service, max_queued_tasks=max_queued))

    def register_remote(self, definition: ServiceDefinition, owner: str) -> RegisteredService:
        """A service in another process joins, reached at a validated, allowed URL.

        `owner` is the service token it presented: only the same token may replace it, take it
        away or post its tasks' results, and the gateway presents that token to it.
        """
        name = definition.service_name
        if name == CONTROL_PLANE_NAME:
            raise ApiError(422, f"{name!r} is reserved for the control plane")
        existing = self.registry.get(name)
        if existing is not None and not existing.is_remote:
            raise ApiError(409, f"{name!r} is a service of this gateway and cannot be replaced")
        url = self.remote.url_for(definition)
        if existing is not None:
            self.deregister_remote(name, owner)
        consumer = RemoteConsumer(
            message_type=name, url=str(url), token=self.remote.token_of(owner)
        )
        self.bus.register_consumer(consumer)
        definition = definition.model_copy(update={"remote": True})
        entry = RegisteredService(definition, None, consumer_id=consumer.id_, owner=owner)
        self.registry.add(entry)
        return entry

    def deregister_remote(self, name: str, owner: str) -> None:
        entry = self.registry.get(name)
        if entry is None:
            raise ApiError(404, f"no service named {name!r}")
        if not entry.is_remote:
            raise ApiError(409, f"{name!r} is a service of this gateway and cannot be deregistered")
        if entry.owner != owner:
            raise ApiError(403, f"{name!r} was registered with another service token")
        self.registry.remove(name)
        if entry.consumer_id:
            self.bus.deregister_consumer(entry.consumer_id)

    # -- sessions ----------------------------------------------------------------------------
    def create_session(self, session_id: str | None = None) -> SessionRecord:
        if session_id is not None and self.sessions.get(session_id) is not None:
            raise ApiError(409, f"a session with id {session_id!r} already exists")
        record = self.sessions.create(session_id)
        self.store.save_session(record)
        return record

    def session(self, session_id: str) -> SessionRecord:
        record = self.sessions.get(session_id)
        if record is None:
            raise ApiError(404, f"no session {session_id!r}")
        return record

    async def delete_session(self, session_id: str) -> list[str]:
        """Delete a session: its unfinished tasks end `cancelled` (queued ones never start; the
        running one is stopped), then its state and saved contexts go. Answers the ids of the
        tasks it cancelled."""
        record = self.session(session_id)
        self.sessions.delete(session_id)
        reason = f"cancelled: session {session_id!r} was deleted"
        unfinished = []
        for task_id in record.task_ids:
            task = self.tasks.get(task_id)
            if task is None:  # evicted here, or kept by a shared store (Redis mode)
                try:
                    task = await self.find_task(task_id)
                except ApiError:
                    continue
            if not task.is_terminal:
                unfinished.append(task)
        # All end before anything awaits (here `_end` never does), newest first: a queued task
        # leaves its lane before the running one's end could release it to run. (A shared
        # store's workers check that a task is not over before they run it.)
        for task in reversed(unfinished):
            await self._end(task.task_id, TaskStatus.CANCELLED, error=reason)
        for task in unfinished:
            await self._tell_stop(task)
        self.store.delete_session(session_id)
        for service in self.registry.local_services():
            forget = getattr(service, "forget_session", None)
            if forget is not None:
                forget(session_id)
        return [task.task_id for task in unfinished]

    def reset_session(self, session_id: str) -> list[str]:
        """Forget the session's saved contexts and agent memories, keep its tasks and state:
        the way out when saved state no longer verifies (signed with another key)."""
        self.session(session_id)
        services = sorted(self.registry.definitions())
        for name in services:
            self.store.delete_context(session_id, name)
        for service in self.registry.local_services():
            forget = getattr(service, "forget_session", None)
            if forget is not None:
                forget(session_id)
        return services

    async def reset_done(self) -> None:
        """Return once the reset just made is stored: the next task finds no saved context."""
        try:
            await self.store.flush()
        except StoreUnavailable as exc:
            raise ApiError(503, str(exc), headers={"Retry-After": "2"}) from None

    def merge_session_state(self, session_id: str, patch: dict[str, Any]) -> SessionRecord:
        record = self.session(session_id)
        record.state.update(patch)
        self.store.save_session(record)
        return record

    # -- tasks -------------------------------------------------------------------------------
    def resolve_service(self, name: str | None) -> str:
        target = name or self.default_service
        if not target:
            raise ApiError(422, "no service named and no default_service configured")
        if target not in self.registry:
            raise ApiError(404, f"no service named {target!r}")
        return target

    def task(self, task_id: str) -> TaskRecord:
        record = self.tasks.get(task_id) or self.store.load_task(task_id)
        if record is None:
            raise ApiError(404, f"no task {task_id!r}")
        return record

    # Lookups a shared store answers (Redis mode overrides these; here they are the tables).
    async def find_task(self, task_id: str) -> TaskRecord:
        return self.task(task_id)

    async def find_session(self, session_id: str) -> SessionRecord:
        return self.session(session_id)

    async def session_tasks(self, session: SessionRecord) -> list[TaskRecord]:
        """The session's tasks still known, in submission order."""
        records = (self.tasks.get(t) or self.store.load_task(t) for t in session.task_ids)
        return [record for record in records if record is not None]

    async def open_feed(self, after: int = 0, keep: Callable[[str], bool] | None = None) -> Any:
        """The aggregate feed (every task's status changes) after position `after`."""
        return self.events.subscribe_feed(after, keep)

    async def new_session(self) -> SessionRecord:
        """A new session, committed before it is answered (a store that cannot write: 503)."""
        record = self.create_session()
        try:
            await self.store.flush()
        except StoreUnavailable as exc:
            self.sessions.delete(record.session_id)
            self.store.delete_session(record.session_id)
            raise ApiError(
                503, f"{exc}; the session was not created", headers={"Retry-After": "2"}
            ) from None
        return record

    async def open_subscription(self, task_id: str, after: int = 0) -> Subscription:
        return self.subscribe(task_id, after)

    async def submit(
        self,
        task: TaskDefinition,
        service: str | None = None,
        state: dict | None = None,
        *,
        sent: Any = None,
    ) -> TaskRecord:
        """Accept a task (202) or refuse it (4xx/503); an accepted task always ends.

        `sent` is the input as the client sent it (a JSON value), kept so that the task shows
        it back unchanged; the service receives `task.input`, its text form.
        """
        if not self.accepting:
            raise ApiError(503, "the gateway is shutting down", headers={"Retry-After": "5"})
        target = self.resolve_service(service or task.agent_id)
        entry = self.registry.get(target)
        assert entry is not None
        session = self.session(task.session_id) if task.session_id else None
        # Ids of tasks no longer in memory (from before a restart, or evicted) stay taken too.
        if task.task_id in self.tasks or self.store.load_task(task.task_id) is not None:
            raise ApiError(409, f"a task with id {task.task_id!r} already exists")
        if self.tasks.active_count(target) >= entry.max_queued_tasks:
            raise ApiError(
                503,
                f"service {target!r} has {entry.max_queued_tasks} tasks queued; retry later",
                headers={"Retry-After": "1"},
            )
        if task.agent_id != target:
            task = task.model_copy(update={"agent_id": target})
        if task.task_id in self.events:  # an ended task's stream, kept past its record
            self.events.forget(task.task_id)
        record = self.tasks.add(
            TaskRecord(
                task_id=task.task_id,
                service=target,
                session_id=task.session_id,
                input=task.input if sent is None else sent,
            )
        )
        if self.tracing is not None:
            self.tracing.start_task(record)
        if self.store.durable:
            # Committed before it can run: a task the store refused must never have started.
            await self._commit_new(record, session)
            if record.is_terminal:  # cancelled by id while its commit was being written
                return record
        self._publish_status(record, TaskStatus.PENDING)
        if self.store.durable:
            await self._route_accepted(task, state)
            return record
        if session is not None:  # listed first: deleting the session meanwhile cancels it
            session.task_ids.append(task.task_id)
        try:
            await self._route(task, state, wait=False)
        except (BusFull, NoConsumer):
            self._refuse(record, session)
            raise
        return record

    def _enter_lane(self, task: TaskDefinition) -> tuple[LaneKey | None, bool]:
        """Hold the task's (session, service) lane for it, or queue it behind the task that
        holds it (then `queued` is True). Tasks outside a session have no lane."""
        lane = (task.session_id, task.agent_id or "") if task.session_id else None
        if lane is None:
            return None, False
        if lane in self._lane_busy:
            self._lanes.setdefault(lane, deque()).append(task.task_id)
            return lane, True
        self._lane_busy[lane] = task.task_id
        return lane, False

    async def _route_accepted(self, task: TaskDefinition, state: dict | None) -> None:
        """Route a committed (so already accepted) task: a full bus makes it wait for room in
        the background, holding its lane (how many can wait is bounded by each service's
        max_queued_tasks); a vanished service fails it."""
        _, queued = self._enter_lane(task)
        if queued:
            return
        try:
            await self._dispatch(task, state, wait=False)
        except BusFull:
            self._start_dispatch(task, state)
        except NoConsumer as exc:
            await self._end(task.task_id, TaskStatus.FAILED, error=str(exc))

    async def _commit_new(self, record: TaskRecord, session: SessionRecord | None) -> None:
        """Write a new task (and its session's task list) and wait for the commit; a failed
        commit refuses the submission with 503 and leaves no trace of the task."""
        if session is not None:
            session.task_ids.append(record.task_id)
            self.store.save_session(session)
        self.store.save_task(record, new=True)
        try:
            await self.store.flush()
        except StoreUnavailable as exc:
            self._refuse(record, session)
            raise ApiError(
                503, f"{exc}; the task was not accepted", headers={"Retry-After": "2"}
            ) from None

    def _refuse(self, record: TaskRecord, session: SessionRecord | None) -> None:
        if self.tracing is not None:
            self.tracing.end_task(record.task_id, "refused", "the task was not accepted")
        self.tasks.discard(record.task_id)
        if record.task_id in self.events:  # its `pending` reached the aggregate stream
            self.events.publish_feed(
                TaskEvent(
                    task_id=record.task_id,
                    kind="status",
                    name="refused",
                    data={"service": record.service, "session_id": record.session_id},
                )
            )
        self.events.forget(record.task_id)
        if session is not None and record.task_id in session.task_ids:
            session.task_ids.remove(record.task_id)
            if self.store.durable:
                self.store.save_session(session)
        self._set_idle_if_quiet()

    async def _route(self, task: TaskDefinition, state: dict | None, wait: bool) -> None:
        """Dispatch now, or queue behind the running task of the same session and service."""
        # The lane is held before dispatching: the task may end while `_dispatch` waits.
        lane, queued = self._enter_lane(task)
        if queued:
            return
        try:
            await self._dispatch(task, state, wait=wait)
        except BaseException:
            if lane is not None and self._lane_busy.get(lane) == task.task_id:
                self._advance_lane(lane)
            raise

    async def _dispatch(
        self, task: TaskDefinition, state: dict | None = None, wait: bool = False
    ) -> None:
        take = self._local_taker(task.agent_id or "")
        if take is not None:
            await self._hand_over(take, task, state or {})
            return
        message = QueueMessage.carrying(
            NewTask(task=task, state=state or {}),
            publisher_id=self.publisher_id,
            type=task.agent_id or "",
            action=ActionTypes.NEW_TASK,
        )
        if self.tracing is not None:  # the task's span, wherever and whenever this runs
            record = self.tasks.get(task.task_id)
            message.trace = record.trace if record is not None else None
        await self.bus.publish(message, timeout=None if wait else -1.0)

    def _local_taker(self, service: str) -> Callable[[TaskDefinition, dict], None] | None:
        """How a service of this process takes a task by call, if it does (see
        `BaseService.task_taker`); None means the task goes over the bus as a message.

        The bus delivered such a service's NEW_TASK inline anyway, as an envelope it unwrapped
        again in the same task; a call skips the envelope. Not with tracing on (the message
        carries the task's trace), nor once the service has left the bus (shutdown)."""
        if not self.dispatch_by_call or self.tracing is not None:
            return None
        entry = self.registry.get(service)
        if entry is None or entry.service is None or not self.bus.has_consumer(service):
            return None
        return entry.service.task_taker()

    async def _hand_over(
        self, take: Callable[[TaskDefinition, dict], None], task: TaskDefinition, state: dict
    ) -> None:
        """`take` the task as its NEW_TASK delivery would: what it raises fails that task
        (anything short of our own cancellation, as the bus's delivery contains it)."""
        try:
            take(task, state)
        except BaseException as exc:
            if is_our_cancellation(exc):
                raise
            logger.exception("service %s failed to take task %s", task.agent_id, task.task_id)
            await self._end(task.task_id, TaskStatus.FAILED, error=describe(exc))

    async def cancel(self, task_id: str) -> TaskRecord:
        record = self.task(task_id)
        if record.is_terminal:
            raise ApiError(409, f"task {task_id!r} already ended as {record.status.value}")
        await self._cancel(record, "cancelled by request")
        return record

    async def _cancel(self, record: TaskRecord, reason: str) -> None:
        """End a task `cancelled` with `reason` and tell its service to stop it."""
        await self._end(record.task_id, TaskStatus.CANCELLED, error=reason)
        await self._tell_stop(record)

    async def _tell_stop(self, record: TaskRecord) -> None:
        task_id = record.task_id
        with anyio.move_on_after(1):
            try:
                await self.bus.publish(
                    QueueMessage(
                        publisher_id=self.publisher_id,
                        type=record.service,
                        action=ActionTypes.CANCEL_TASK,
                        data={"task_id": task_id},
                    )
                )
            except BusError:
                logger.warning("could not tell %s to stop task %s", record.service, task_id)

    async def send_event(self, task_id: str, name: str, data: dict[str, Any]) -> None:
        """Validate (locally hosted services) and forward an event into a running task."""
        record = self.task(task_id)
        if record.is_terminal:
            raise ApiError(409, f"task {task_id!r} already ended as {record.status.value}")
        if record.status is TaskStatus.PENDING:
            # no run exists yet to receive it: refuse rather than let the service drop it
            raise ApiError(409, f"task {task_id!r} has not started yet; retry once it runs")
        entry = self.registry.get(record.service)
        service = entry.service if entry is not None else None
        if service is not None:
            build = getattr(service, "build_event", None)
            if build is None:
                raise ApiError(422, f"service {record.service!r} does not accept events")
            try:
                build(name, data, task_id=task_id)
            except ValueError as exc:
                raise ApiError(422, str(exc)) from None
        await self.bus.publish(
            QueueMessage(
                publisher_id=self.publisher_id,
                type=record.service,
                action=ActionTypes.SEND_EVENT,
                data={"task_id": task_id, "event": name, "data": data},
            )
        )

    async def wait(self, task_id: str, timeout: float | None) -> TaskRecord:
        self.task(task_id)
        record = await self.tasks.wait(task_id, timeout)
        return record or self.task(task_id)

    async def run(
        self, task: TaskDefinition, service: str, timeout: float | None, sent: Any = None
    ) -> TaskRecord:
        """Submit and wait: the synchronous `/run` endpoints of services use this."""
        record = await self.submit(task, service, sent=sent)
        return await self.wait(record.task_id, timeout)

    # -- messages from services -------------------------------------------------------------
    async def process_message(self, message: QueueMessage) -> None:
        """A report that came as a bus message (a remote service, or one sent over HTTP)."""
        if message.action == ActionTypes.COMPLETED_TASK:
            await self.take_result(message.body_as(TaskResult), message.publisher_id)
        elif message.action == ActionTypes.TASK_STREAM:
            await self.take_event(message.body_as(TaskEvent), message.publisher_id)
        else:
            raise ValueError(f"the control plane does not handle {message.action!r}")

    async def take_result(self, result: TaskResult, publisher_id: str | None) -> None:
        """A service reports a task's end (a service of this process calls this directly)."""
        if self._stopped:
            return
        if self._refused(result.task_id, ActionTypes.COMPLETED_TASK, publisher_id, result.status):
            return
        await self._end(result.task_id, result.status, result=result, error=result.error)

    async def take_event(self, event: TaskEvent, publisher_id: str | None) -> None:
        """A service reports a status change or a progress event of a running task."""
        if self._stopped:
            return
        if self._refused(event.task_id, ActionTypes.TASK_STREAM, publisher_id):
            return
        if event.kind == "status" and event.status is not None:
            if self._set_status(event.task_id, event.status, event) is None:
                return
        else:
            record = self.tasks.get(event.task_id)
            if record is None:
                return
            record.last_seq = self.events.publish(event) or record.last_seq
        if self.events.has_subscribers(event.task_id):
            # This runs in the reporting service's task. A workflow writing a burst of events
            # would otherwise fill every reader's buffer before any reader runs, and even fast
            # readers would be dropped as "lagging": let them drain each event.
            await anyio.lowlevel.checkpoint()

    async def take_status(self, task_id: str, status: TaskStatus, publisher_id: str | None) -> None:
        """`take_event` for a bare status change (`running`, `waiting_for_human`, ...) from a
        service of this process: no event object is built unless a reader asks for it."""
        if self._stopped:
            return
        if self._refused(task_id, ActionTypes.TASK_STREAM, publisher_id):
            return
        if self._set_status(task_id, status) is not None and self.events.has_subscribers(task_id):
            await anyio.lowlevel.checkpoint()  # as in take_event

    def _set_status(
        self, task_id: str, status: TaskStatus, event: TaskEvent | None = None
    ) -> TaskRecord | None:
        record = self.tasks.set_status(task_id, status)
        if record is not None:
            self._publish_status(record, status, event)
            self.store.save_task(record)
        return record

    def expected_publisher(self, service: str) -> str | None:
        """Who may report on a task of `service`: its local instance, or its remote identity."""
        entry = self.registry.get(service)
        if entry is None:
            return None
        if entry.service is None:
            return remote_publisher(service)
        return entry.service.publisher_id

    def result_problem(
        self, task_id: str, publisher_id: str | None, status: TaskStatus | None = None
    ) -> tuple[int, str] | None:
        """Why a report on `task_id` must be refused (status code, reason), or None."""
        record = self.tasks.get(task_id)
        if record is None:
            return 404, f"no task {task_id!r} is running here"
        if publisher_id != self.expected_publisher(record.service):
            return 403, f"task {task_id!r} was not dispatched to {publisher_id!r}"
        if record.is_terminal:
            return 409, f"task {task_id!r} already ended as {record.status.value}"
        if status is not None and not status.is_terminal:
            return 422, f"a completed_task message needs a terminal status, not {status.value!r}"
        return None

    def _refused(
        self,
        task_id: str,
        action: ActionTypes,
        publisher_id: str | None,
        status: TaskStatus | None = None,
    ) -> bool:
        problem = self.result_problem(task_id, publisher_id, status)
        if problem is None:
            return False
        if problem[0] != 409 and problem[0] != 404:  # late or stray reports are normal
            logger.warning(
                "refused %s for task %s from %s: %s", action, task_id, publisher_id, problem[1]
            )
        return True

    async def fail_message(self, message: QueueMessage, exc: BaseException) -> None:
        """Bus hook: a handler raised on a task's message, so that task fails with the error."""
        if message.action != ActionTypes.NEW_TASK:
            return
        task_id = (message.data.get("task") or {}).get("task_id")
        if task_id:
            await self._end(task_id, TaskStatus.FAILED, error=describe(exc))

    async def _end(
        self,
        task_id: str,
        status: TaskStatus,
        result: TaskResult | None = None,
        error: str | None = None,
    ) -> None:
        record = self.tasks.finish(task_id, status, result, error)
        if record is None:
            return
        # The result is the task's last event; its seq is saved so it keeps it for good.
        record.last_seq = (
            self.events.publish_deferred(task_id, "result", _ResultEvent(record)) or record.last_seq
        )
        self.events.close(task_id)
        self._publish_feed(record, status, record.last_seq)
        self.store.save_task(record)
        if self.tracing is not None:
            self.tracing.end_task(task_id, status.value, error)
        # A line per task that did not complete (INFO); completed ones only at DEBUG: at full
        # load the line cost a tenth of the task path, and the access log shows them anyway.
        logger.log(
            logging.DEBUG if status is TaskStatus.COMPLETED else logging.INFO,
            "task ended",
            extra={"task_id": task_id, "service": record.service, "status": status.value},
        )
        for listener in self.on_task_end:
            listener(record)
        lane = (record.session_id, record.service) if record.session_id else None
        # Only the end of the task holding the lane releases the next one; a queued task that
        # ends early (cancelled) just leaves the queue.
        if lane is not None and self._lane_busy.get(lane) == task_id:
            self._advance_lane(lane)
        self._set_idle_if_quiet()

    @staticmethod
    def _result_event(record: TaskRecord) -> TaskEvent:
        """A task's `result` event, stamped with its end: the same whenever and wherever it is
        written (held here, rebuilt after a restart or eviction, from Redis)."""
        event = TaskEvent(
            task_id=record.task_id,
            kind="result",
            status=record.status,
            data=record.view().model_dump(mode="json", include={"result", "error", "status"}),
        )
        if record.finished_at is not None:
            event.at = record.finished_at
        return event

    def _publish_status(
        self, record: TaskRecord, status: TaskStatus, event: TaskEvent | None = None
    ) -> None:
        """A status change: on the task's stream and on the aggregate feed."""
        if event is None:
            seq = self.events.publish_status(record.task_id, status)
        else:
            seq = self.events.publish(event)
        record.last_seq = seq or record.last_seq
        self._publish_feed(record, status, record.last_seq)

    def _publish_feed(self, record: TaskRecord, status: TaskStatus, task_seq: int) -> None:
        self.events.publish_feed(
            FeedStatus(record.task_id, status, record.service, record.session_id, task_seq)
        )

    def subscribe(self, task_id: str, after: int = 0) -> Subscription:
        """A task's event stream after event `after`. A task that ended with no events kept
        here (it ended before a restart, or its channel was dropped) gets a gap event and its
        result, under the result's original seq, so the stream still ends."""
        record = self.task(task_id)
        if task_id not in self.events:
            if record.is_terminal:
                self.events.open(task_id, max(record.last_seq - 1, 0))
                self.events.publish(self._result_event(record))
                self.events.close(task_id)
            else:
                self.events.open(task_id, record.last_seq)
        return self.events.subscribe(task_id, after)

    def _set_idle_if_quiet(self) -> None:
        if not self.tasks.active_count():
            self._idle.set()

    def _advance_lane(self, lane: LaneKey) -> None:
        if self._stopped:
            return
        queue = self._lanes.get(lane)
        while queue:
            next_id = queue.popleft()
            record = self.tasks.get(next_id)
            if record is None or record.is_terminal:
                continue
            self._lane_busy[lane] = next_id
            self._start_dispatch(record.definition())
            return
        self._lanes.pop(lane, None)
        self._lane_busy.pop(lane, None)

    def _start_dispatch(self, task: TaskDefinition, state: dict | None = None) -> None:
        """Hand an accepted task to its service in the background, waiting for bus room."""
        assert self._task_group is not None, "control plane not started"
        self._task_group.start_soon(self._dispatch_queued, task, state)

    async def _dispatch_queued(self, task: TaskDefinition, state: dict | None = None) -> None:
        record = self.tasks.get(task.task_id)
        if record is None or record.is_terminal:  # cancelled before its turn came
            return
        try:
            await self._dispatch(task, state, wait=True)
        except NoConsumer as exc:
            await self._end(task.task_id, TaskStatus.FAILED, error=str(exc))


class _ResultEvent(Deferred):
    """A task's `result` event, written from its (terminal, so final) record when read."""

    __slots__ = ("record",)

    def __init__(self, record: TaskRecord) -> None:
        self.record = record

    def json(self, seq: int) -> str:
        event = ControlPlane._result_event(self.record)
        event.seq = seq
        return event.model_dump_json()
