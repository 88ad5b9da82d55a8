"""The control plane of a deployment spread over several processes (Redis mode).

Same API as `ControlPlane`; what changes is where the truth lives. Task records, session lanes,
sessions and contexts are in Redis (`gateway.store.redis`), so any replica accepts any task and
answers any query; this process keeps only caches and its local waiters. Submitting and ending
are the store's atomic scripts, which is what keeps "exactly one terminal state" true when a
task is delivered twice (a replica died, its entry was taken over).

About 500 lines: it overrides the whole task and session life cycle of `ControlPlane` at once
(submit, take, wait, cancel, end, delete, reset), and splitting those apart would scatter one
state machine. Its event streams and feed are in `gateway.control_plane.shared_events`.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import anyio
from anyio.abc import TaskGroup
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from gateway.bus import BusUnavailable, NoConsumer
from gateway.bus.redis import RedisBus, write_refusal
from gateway.control_plane.plane import ControlPlane
from gateway.control_plane.registry import RegisteredService
from gateway.control_plane.sessions import SessionRecord
from gateway.control_plane.shared_events import SharedEventHub, SharedSubscription
from gateway.control_plane.tasks import TaskRecord
from gateway.messages import (
    ActionTypes,
    NewTask,
    QueueMessage,
    ServiceDefinition,
    TaskDefinition,
    TaskEvent,
    TaskResult,
    TaskStatus,
)
from gateway.store.redis import RedisStore, SubmitRefused
from gateway.web.errors import ApiError

logger = logging.getLogger("gateway.control_plane.shared")

RETRY_AFTER = {"Retry-After": "1"}
WRITE_RETRY = {"Retry-After": "5"}  # a full or read-only Redis needs an operator, not a blink
MAX_PENDING_EVENTS = 100_000


def _unavailable(exc: BaseException) -> ApiError:
    refused = write_refusal(exc)
    if refused is not None:  # reachable, but it takes no writes: say why, and nothing was kept
        return ApiError(503, f"{refused}; nothing was stored, retry later", headers=WRITE_RETRY)
    return ApiError(503, f"the shared store (Redis) is unavailable: {exc}", headers=RETRY_AFTER)


class SharedControlPlane(ControlPlane):
    """A control plane whose tasks, lanes and sessions live in Redis."""

    bus: RedisBus
    store: RedisStore
    events: SharedEventHub

    def __init__(self, bus: RedisBus, *, store: RedisStore, **kwargs: Any) -> None:
        super().__init__(bus, store=store, **kwargs)
        self.dispatch_by_call = False  # a task goes through Redis, to whichever replica takes it
        bus.hooks = self
        bus.on_discovery = self._sync_registry
        bus.on_notice = self._on_notice
        local = self.events
        self.events = SharedEventHub(
            store,
            replay_size=local.replay_size,
            retain_closed=local.retain_closed,
            feed_size=local.feed.size,
        )
        store.feed_size = max(store.feed_size, local.feed.size)
        # Progress events are written behind the services' backs (ordered, batched) so a task
        # never waits on Redis to say it runs; its end waits until they are written.
        self._events: list[TaskEvent] = []
        self._events_recorded = 0
        self._events_written = 0
        self._events_dirty = anyio.Event()
        self._events_landed = anyio.Event()
        # Ended tasks this process saw end (a terminal record never changes): answers waiters
        # here without another read.
        self._ended: OrderedDict[str, TaskRecord] = OrderedDict()
        # Tasks the submit script recorded running (taken here with a free slot): the first
        # `running` their service reports is already in Redis.
        self._started_by_take: set[str] = set()

    # -- lifecycle ---------------------------------------------------------------------------
    def register_local(self, definition: ServiceDefinition, service: Any, max_queued: int) -> None:
        super().register_local(definition, service, max_queued)
        advert = {**definition.model_dump(mode="json"), "max_queued_tasks": max_queued}
        concurrency = max(1, getattr(service, "max_concurrent_tasks", 8))
        self.bus.host(definition.service_name, advert, concurrency * 2, local=concurrency)

    async def open_store(self, task_group: TaskGroup) -> None:
        await self.bus.connect(task_group)
        await self.store.open(task_group)
        task_group.start_soon(self._event_writer, name="redis-event-writer")
        task_group.start_soon(self.events.follow_loop, name="redis-feed-follower")
        task_group.start_soon(self.events.write_loop, name="redis-feed-writer")

    async def recover(self) -> None:
        """Nothing to replay here: unfinished tasks wait in their streams, whoever died."""
        assert self._task_group is not None
        self.bus.start_streams(self._task_group)

    async def drain(self, grace: float) -> list[str]:
        """Take no more work; let local tasks end within `grace`; leave the rest in Redis.

        A task still running here after the grace period is not cancelled: its entry stays
        unacknowledged, so another replica takes it over after `claim_idle`.
        """
        self.stop_accepting()
        self.bus.stop_receiving()
        with anyio.move_on_after(grace):
            await self.bus.wait_idle()
        self._stopped = True
        return []

    def _sync_registry(self, remote: dict[str, dict[str, Any]]) -> None:
        """Discovery: services any live replica hosts appear; those nobody hosts go."""
        for name, info in remote.items():
            if name in self.registry:
                continue
            advert = dict(info["definition"])
            max_queued = int(advert.pop("max_queued_tasks", 1024))
            definition = ServiceDefinition.model_validate({**advert, "remote": True})
            self.registry.add(RegisteredService(definition, None, max_queued_tasks=max_queued))
        for name, entry in list(self.registry.definitions().items()):
            stale = entry.remote and name not in remote
            registered = self.registry.get(name)
            if stale and registered is not None and registered.consumer_id is None:
                self.registry.remove(name)

    # -- lookups -----------------------------------------------------------------------------
    async def find_task(self, task_id: str, watch: bool = False) -> TaskRecord:
        """The task's record; with `watch`, this replica is also told when it changes."""
        ended = self._ended.get(task_id)
        if ended is not None:
            return ended
        if watch:
            read = lambda: self.store.watch_task(task_id, self.bus.replica_id)  # noqa: E731
        else:
            read = lambda: self.store.fetch_task(task_id)  # noqa: E731
        try:
            try:
                record = await read()
            except RedisConnectionError:  # a pooled connection from before a Redis restart
                record = await read()  # a read (and an idempotent SADD): safe to repeat once
        except RedisError as exc:
            raise _unavailable(exc) from None
        if record is None:
            raise ApiError(404, f"no task {task_id!r}")
        return record

    async def find_session(self, session_id: str) -> SessionRecord:
        try:
            record = await self.store.fetch_session(session_id)
        except RedisError as exc:
            raise _unavailable(exc) from None
        if record is None:
            self.sessions.delete(session_id)
            raise ApiError(404, f"no session {session_id!r}")
        cached = self.sessions.get(session_id)
        if cached is None:
            self.sessions.add(record)
            return record
        cached.task_ids, cached.state = record.task_ids, record.state
        return cached

    async def session_tasks(self, session: SessionRecord) -> list[TaskRecord]:
        try:
            return await self.store.fetch_tasks(session.task_ids)
        except RedisError as exc:
            raise _unavailable(exc) from None

    async def open_feed(self, after: int = 0, keep: Callable[[str], bool] | None = None) -> Any:
        """The deployment's feed, every replica's tasks (gateway.control_plane.shared_events)."""
        return await self.events.open_feed(after, keep)

    async def delete_session(self, session_id: str) -> list[str]:
        """Delete a session for every replica: it goes from Redis first (no task joins it
        afterwards), then its unfinished tasks end `cancelled` wherever they run (the replicas
        running them are told to stop), and every replica forgets what it caches of it."""
        await self.find_session(session_id)
        try:
            task_ids = await self.store.remove_session(session_id)
            tasks = await self.store.fetch_tasks(task_ids)
        except RedisError as exc:
            raise _unavailable(exc) from None
        unfinished = [task for task in tasks if not task.is_terminal]
        reason = f"cancelled: session {session_id!r} was deleted"
        # Newest first: a queued task leaves its lane before the running one's end moves it.
        for task in reversed(unfinished):
            await self._end(task.task_id, TaskStatus.CANCELLED, error=reason)
        for task in unfinished:
            await self._tell_stop(task)
        self._forget_session(session_id, deleted=True)
        self.bus.tell_all(f"x{session_id}")
        return [task.task_id for task in unfinished]

    def reset_session(self, session_id: str) -> list[str]:
        services = super().reset_session(session_id)  # contexts deleted in Redis (soon)
        self.bus.tell_all(f"r{session_id}")  # and the other replicas forget their copies
        return services

    async def reset_done(self) -> None:
        """The contexts are deleted in Redis and the other replicas told, before answering."""
        try:
            await self.store.flush()
            await self.bus.send_notices()
        except RedisError as exc:
            raise _unavailable(exc) from None

    def _on_notice(self, notice: str) -> None:
        """A notice to every replica: `x<session>` deleted, `r<session>` reset."""
        if notice[:1] in ("x", "r"):
            self._forget_session(notice[1:], deleted=notice[0] == "x")

    def _forget_session(self, session_id: str, deleted: bool) -> None:
        if deleted:
            self.sessions.delete(session_id)
        self.store.forget_cached(session_id)
        for service in self.registry.local_services():
            forget = getattr(service, "forget_session", None)
            if forget is not None:
                forget(session_id)

    async def new_session(self) -> SessionRecord:
        record = self.sessions.create()
        try:
            await self.store.create_session(record)
        except RedisError as exc:
            self.sessions.delete(record.session_id)
            raise _unavailable(exc) from None
        return record

    # -- tasks -------------------------------------------------------------------------------
    async def submit(
        self,
        task: TaskDefinition,
        service: str | None = None,
        state: dict | None = None,
        *,
        sent: Any = None,
    ) -> TaskRecord:
        if not self.accepting:
            raise ApiError(503, "the gateway is shutting down", headers={"Retry-After": "5"})
        target = self.resolve_service(service or task.agent_id)
        entry = self.registry.get(target)
        assert entry is not None
        task = task.model_copy(update={"agent_id": target})
        record = TaskRecord(
            task_id=task.task_id,
            service=target,
            session_id=task.session_id,
            input=task.input if sent is None else sent,  # shown back as it was sent
        )
        message = QueueMessage.carrying(  # its JSON goes to Redis; a local take gets the object
            NewTask(task=task, state=state or {}),
            publisher_id=self.publisher_id,
            type=target,
            action=ActionTypes.NEW_TASK,
        )
        event = TaskEvent(task_id=task.task_id, kind="status", status=TaskStatus.PENDING)
        if self.tracing is not None:
            self.tracing.start_task(record)
            message.trace = record.trace
        outcome = "refused"
        take = self.bus.reserve_local(target, getattr(entry.service, "running", True))
        submitted = None
        try:
            submitted = await self.store.submit(
                record,
                message,
                entry.max_queued_tasks,
                event,
                take.consumer if take is not None else "",
                time.time() if take is not None and take.starts else None,
            )
            outcome = "pending"
        except SubmitRefused as refused:
            raise self._refusal(refused.reason, task, entry) from None
        except RedisError as exc:
            if write_refusal(exc) is None:  # else reads still work: the connection is fine
                self.bus.healthy = False
            raise _unavailable(exc) from None
        finally:
            if take is not None and (submitted is None or submitted.taken is None):
                self.bus.unreserve_local(target, take)
            # The task may end in another replica, where this span object is not: here it
            # covers the acceptance, and the run (in whichever replica) is its child.
            if self.tracing is not None:
                self.tracing.end_task(record.task_id, outcome, None)
        if submitted.taken is not None and take is not None:
            # Read for us by the submit script: start it here. Shielded, so that a client
            # going away now cannot leave the entry idle until it is claimed back.
            own = message if submitted.raw is None else None
            if submitted.running:  # recorded running already: its service's report is not
                self._started_by_take.add(task.task_id)
            with anyio.CancelScope(shield=True):
                await self.bus.receive_taken(target, submitted.taken, own, submitted.raw, take)
        return record

    @staticmethod
    def _refusal(reason: str, task: TaskDefinition, entry: RegisteredService) -> ApiError:
        if reason == "exists":
            return ApiError(409, f"a task with id {task.task_id!r} already exists")
        if reason == "nosession":
            return ApiError(404, f"no session {task.session_id!r}")
        return ApiError(
            503,
            f"service {task.agent_id!r} has {entry.max_queued_tasks} tasks queued; retry later",
            headers=RETRY_AFTER,
        )

    async def run(
        self, task: TaskDefinition, service: str, timeout: float | None, sent: Any = None
    ) -> TaskRecord:
        """Submit and wait. The wake-up is registered before submitting, so no read of the
        record is needed until it fires: when the task ran here, the end it reads is the one
        this process just stored (`_ended`), and the whole run costs no extra round trip."""
        task_id = task.task_id
        deadline = None if timeout is None else anyio.current_time() + timeout
        with self.bus.done_signal(task_id) as signal:
            record = await self.submit(task, service, sent=sent)
            if not self.bus.runs_here(task_id):  # its end is told to us only if we watch it
                record = await self.find_task(task_id, watch=True)
                if record.is_terminal:
                    return record
            with anyio.move_on_after(timeout):
                await signal.wait()
        ended = self._ended.get(task_id)
        if ended is not None:
            return ended
        left = None if deadline is None else max(0.0, deadline - anyio.current_time())
        return await self.wait(record.task_id, left)

    async def wait(self, task_id: str, timeout: float | None) -> TaskRecord:
        deadline = None if timeout is None else anyio.current_time() + timeout
        while True:
            with self.bus.done_signal(task_id) as signal:  # before reading: no end is missed
                record = await self.find_task(task_id, watch=True)
                left = None if deadline is None else deadline - anyio.current_time()
                if record.is_terminal or (left is not None and left <= 0):
                    return record
                with anyio.move_on_after(left):
                    await signal.wait()

    async def cancel(self, task_id: str) -> TaskRecord:
        record = await self.find_task(task_id)
        if record.is_terminal:
            raise ApiError(409, f"task {task_id!r} already ended as {record.status.value}")
        await self._end(task_id, TaskStatus.CANCELLED, error="cancelled by request")
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
            except (BusUnavailable, NoConsumer):
                logger.warning("could not tell %s to stop task %s", record.service, task_id)
        return await self.find_task(task_id)

    async def send_event(self, task_id: str, name: str, data: dict[str, Any]) -> None:
        record = await self.find_task(task_id)
        if record.is_terminal:
            raise ApiError(409, f"task {task_id!r} already ended as {record.status.value}")
        if record.status is TaskStatus.PENDING:
            raise ApiError(409, f"task {task_id!r} has not started yet; retry once it runs")
        await self.bus.publish(
            QueueMessage(
                publisher_id=self.publisher_id,
                type=record.service,
                action=ActionTypes.SEND_EVENT,
                data={"task_id": task_id, "event": name, "data": data},
            )
        )

    # -- messages from the services of this process ------------------------------------------
    async def process_message(self, message: QueueMessage) -> None:
        if message.action == ActionTypes.COMPLETED_TASK:
            await self.take_result(message.body_as(TaskResult), message.publisher_id)
        elif message.action == ActionTypes.TASK_STREAM:
            await self.take_event(message.body_as(TaskEvent), message.publisher_id)
        else:
            raise ValueError(f"the control plane does not handle {message.action!r}")

    async def take_result(self, result: TaskResult, publisher_id: str | None) -> None:
        if self._stopped:
            return
        if not result.status.is_terminal:  # it would end the task and leave it running
            logger.warning(
                "refused completed_task for %s with the non-terminal status %s from %s",
                result.task_id,
                result.status.value,
                publisher_id,
            )
            return
        await self._end(result.task_id, result.status, result=result, error=result.error)

    async def take_event(self, event: TaskEvent, publisher_id: str | None) -> None:
        if self._stopped:
            return
        if event.status is TaskStatus.RUNNING and event.task_id in self._started_by_take:
            self._started_by_take.discard(event.task_id)  # the submit script wrote it
            return
        self._record_event(event)

    async def take_status(self, task_id: str, status: TaskStatus, publisher_id: str | None) -> None:
        # Written to Redis as an event, like every other report here.
        await self.take_event(
            TaskEvent(task_id=task_id, kind="status", status=status), publisher_id
        )

    async def _end(
        self,
        task_id: str,
        status: TaskStatus,
        result: TaskResult | None = None,
        error: str | None = None,
    ) -> None:
        finished_at = time.time()
        self._started_by_take.discard(task_id)
        record = None
        try:
            await self.store.flush()  # contexts saved by the task land before the lane moves
            await self._flush_events()  # and its progress before its result
            record = await self.store.finish(task_id, status, result, error, finished_at)
        except RedisError as exc:
            # Not stored, so not acknowledged: the entry is taken over and the task runs again.
            why = write_refusal(exc) or str(exc)
            logger.warning("end of task %s not stored (%s); it will run again", task_id, why)
            if write_refusal(exc) is None:
                self.bus.healthy = False
            return
        finally:
            # Without a record from this call the task ended elsewhere (the first terminal state
            # stands) or runs again: local waiters are woken to read and watch it.
            self.bus.settle(task_id, abandoned=record is None)
        if record is None:
            return
        self._ended[task_id] = record
        while len(self._ended) > self.tasks.retain_finished:
            self._ended.popitem(last=False)
        self.bus.wake_done(task_id)  # waiters here need not wait for the notification
        logger.log(  # as ControlPlane._end: completed tasks only at DEBUG
            logging.DEBUG if status is TaskStatus.COMPLETED else logging.INFO,
            "task ended",
            extra={"task_id": task_id, "service": record.service, "status": status.value},
        )
        for listener in self.on_task_end:
            listener(record)

    # -- progress events, written behind ------------------------------------------------------
    def _record_event(self, event: TaskEvent) -> None:
        if len(self._events) >= MAX_PENDING_EVENTS:  # Redis away for long: progress is lossy
            logger.warning("event of task %s dropped: too many waiting for Redis", event.task_id)
            return
        self._events.append(event)
        self._events_recorded += 1
        self._events_dirty.set()

    async def _event_writer(self) -> None:
        while True:
            await self._events_dirty.wait()
            self._events_dirty = anyio.Event()
            while self._events:
                batch, self._events = self._events, []
                try:
                    await self.store.write_events(batch)
                except RedisError as exc:  # progress is best effort; the outcome is not
                    logger.warning("%d task event(s) not recorded: %s", len(batch), exc)
                self._events_written += len(batch)
                landed, self._events_landed = self._events_landed, anyio.Event()
                landed.set()

    async def _flush_events(self) -> None:
        target = self._events_recorded
        while self._events_written < target:
            await self._events_landed.wait()

    # -- hooks of the Redis bus --------------------------------------------------------------
    async def before_task(self, message: QueueMessage) -> None:
        """A task of a session runs here: bring its session and saved contexts into the caches
        that the services read synchronously."""
        session_id = (message.data.get("task") or {}).get("session_id")
        if session_id:
            await self.find_session(session_id)
            await self.store.prefetch_contexts(session_id)

    async def task_is_over(self, task_id: str) -> bool:
        status = await self.store.task_status(task_id)
        return status is None or TaskStatus(status).is_terminal

    async def give_up(self, message: QueueMessage, deliveries: int) -> None:
        task_id = str((message.data.get("task") or {}).get("task_id", ""))
        await self._end(task_id, TaskStatus.FAILED, error=f"gave up after {deliveries} deliveries")

    # -- events ------------------------------------------------------------------------------
    async def open_subscription(self, task_id: str, after: int = 0) -> SharedSubscription:
        await self.find_task(task_id)
        return SharedSubscription(self.store, self.bus, task_id, after)

    def subscribe(self, task_id: str, after: int = 0) -> SharedSubscription:  # type: ignore[override]
        return SharedSubscription(self.store, self.bus, task_id, after)
