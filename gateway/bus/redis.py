"""The Redis transport: one deployment across processes and machines.

It extends the in-memory bus rather than replacing it: consumers in this process are still
reached by reference; Redis carries only what leaves the process (as JSON, validated on receipt).

- Tasks: one stream per service, consumer group `workers`, consumer name = this replica's id.
  A receive loop per hosted service blocks on XREADGROUP, taking no more entries than it has
  free slots, so idle replicas get the rest. An entry is acknowledged by the control plane's
  terminal script, never here. Entries this replica still works on get their idle time reset
  by a heartbeat (XCLAIM ... JUSTID); entries idle longer than `claim_idle` (their replica
  died) are taken over with XAUTOCLAIM, and after `max_deliveries` the task is given up.
- Addressed messages (tool-call replies, cancels, events into a running task): one inbox stream
  per replica, read with XREAD BLOCK.
- Discovery: each replica advertises its services and reply addresses in a key with a TTL that
  its heartbeat refreshes; a dead replica disappears by itself.
- Wake-ups: one pub/sub connection per replica, subscribed to its own `note` channel only.
  Waiters of a task that runs here are woken in-process; a replica waiting for a task that runs
  elsewhere registers to watch it, and only then do the store's scripts publish to it (see
  gateway.store.redis). A missed notification is harmless: waiters re-check the record when they
  register and every time the connection comes back. Pub/sub costs one connection per replica
  whatever the number of waiters, which is why it is used rather than a blocking read per
  waiter. The same connection hears the few notices meant for every replica (`all`: a session
  was deleted or reset, drop what is cached of it).

The heartbeat/claim job is a bounded periodic job by nature (claims are about elapsed time);
everything else blocks on reads.

About 700 lines on purpose: the receive loops, takes at submission, the heartbeat, take-over,
discovery and wake-ups all share one replica's in-flight table, slots and adverts; split apart,
that state would be passed around.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import OutOfMemoryError, ReadOnlyError, RedisError, ResponseError

from gateway.bus import BusUnavailable, Consumer, NoConsumer
from gateway.bus.memory import MessageBus
from gateway.messages import CONTROL_PLANE_NAME, ActionTypes, QueueMessage, new_id

logger = logging.getLogger("gateway.bus.redis")

GROUP = "workers"
BLOCK_MS = 2000  # blocking reads wake at least this often (to notice shutdown and outages)
MAX_BACKOFF = 5.0
INBOX_MAXLEN = 10_000


def connect(url: str, *, listener: bool = False) -> Redis:
    """A client for `url`. Its socket timeout is above the block time of blocking reads (a
    shorter one would fail every read that waits); a pub/sub listener waits without one."""
    return Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=2,
        socket_timeout=None if listener else BLOCK_MS / 1000 + 3,
        socket_keepalive=True,
        retry=Retry(NoBackoff(), 0),  # we retry ourselves, with back-off, where it is safe
    )


async def check_reachable(url: str) -> None:
    """Start-up check: raise BusUnavailable with a one-line reason if `url` does not answer."""
    client = connect(url)
    try:
        with anyio.fail_after(3):
            await client.ping()
    except (RedisError, OSError, TimeoutError) as exc:
        raise BusUnavailable(f"cannot reach Redis at {url}: {exc or type(exc).__name__}") from None
    finally:
        await client.aclose()


def write_refusal(exc: BaseException) -> str | None:
    """Why Redis refused a write while it is reachable (None for anything else): out of
    memory (`maxmemory`), unable to persist (`MISCONF`), or a read-only replica. Such a write
    is refused whole (a script stops at its first refused write, before changing anything), so
    the caller only has to refuse its own work and keep nothing."""
    text = str(exc)
    if isinstance(exc, OutOfMemoryError) or text.startswith("OOM"):
        return "Redis is out of memory (its maxmemory is reached) and refuses writes"
    if text.startswith("MISCONF"):
        return "Redis cannot persist to disk (MISCONF) and refuses writes"
    if isinstance(exc, ReadOnlyError) or text.startswith("READONLY"):
        return "Redis is a read-only replica (bus.url must name the primary) and refuses writes"
    return None


class TaskHooks(Protocol):
    """What the bus asks the control plane about tasks it receives or takes over."""

    async def before_task(self, message: QueueMessage) -> None: ...

    async def task_is_over(self, task_id: str) -> bool: ...

    async def give_up(self, message: QueueMessage, deliveries: int) -> None: ...


# What a task in flight holds: a slot of its service's stream loop, a local-take place, or
# nothing (taken over from a dead replica).
STREAM_SLOT, LOCAL_SLOT, NO_SLOT = "stream", "local", ""


@dataclass(frozen=True)
class Take:
    """A local take reserved at submission: our consumer name, and whether it starts at once."""

    consumer: str
    starts: bool


@dataclass
class _Flight:
    service: str
    entry_id: str
    slot: str


class RedisBus(MessageBus):
    """The in-memory bus plus Redis Streams for everything that crosses processes."""

    def __init__(
        self,
        url: str,
        namespace: str,
        *,
        claim_idle: float = 15.0,
        max_deliveries: int = 3,
        replica_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.url = url
        self.prefix = f"gw:{namespace}:"
        self.claim_idle = claim_idle
        self.max_deliveries = max_deliveries
        self.replica_id = replica_id or new_id().replace("-", "")[:16]
        self.heartbeat = max(0.2, min(claim_idle / 3, 5.0))
        self.client = connect(url)
        self._blocking = connect(url)  # blocking reads: one pooled connection per loop
        self._listener = connect(url, listener=True)
        self.hooks: TaskHooks | None = None
        self.healthy = False
        self._refusing = False  # Redis answers but refuses writes (see write_refusal)
        self.on_discovery: Callable[[dict[str, dict[str, Any]]], None] | None = None
        self._hosted: dict[str, dict[str, Any]] = {}  # service -> its advertised definition
        self._slots: dict[str, anyio.Semaphore] = {}
        self._local_room: dict[str, int] = {}  # service -> tasks it may still take at submit
        self._concurrency: dict[str, int] = {}  # service -> its max_concurrent_tasks
        self._busy: dict[str, int] = {}  # service -> its tasks in flight here
        self._starting: dict[str, int] = {}  # service -> takes that start at once, undelivered
        self._started = anyio.Event()  # set when one of those is delivered
        self._inflight: dict[str, _Flight] = {}
        self._remote: dict[str, dict[str, Any]] = {}  # service -> {definition, replicas}
        self._owners: dict[str, str] = {}  # reply address -> replica id
        self._done_waiters: dict[str, list[anyio.Event]] = {}
        self._event_waiters: dict[str, anyio.Event] = {}
        self._advert_changed = anyio.Event()
        self.on_notice: Callable[[str], None] | None = None  # notices to every replica
        self._notices: list[str] = []
        self._notices_dirty = anyio.Event()
        self._idle = anyio.Event()
        self._receiving: anyio.CancelScope | None = None
        self._stop_receiving = False
        self._stream_group: TaskGroup | None = None

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    # -- set-up ------------------------------------------------------------------------------
    def host(self, service: str, definition: dict[str, Any], prefetch: int, local: int = 1) -> None:
        """This replica serves `service` (its stream is read once `start_streams` runs);
        besides `prefetch` entries read by its stream loop it may take up to `local` tasks
        straight from the submissions it accepts (see `reserve_local`)."""
        self._hosted[service] = definition
        self._slots[service] = anyio.Semaphore(prefetch)
        self._local_room[service] = local
        self._concurrency[service] = local
        self._busy[service] = self._starting[service] = 0

    async def connect(self, task_group: TaskGroup) -> None:
        """Check Redis, advertise, learn the others, start the loops that do not run tasks."""
        try:
            with anyio.fail_after(5):
                await self.client.ping()
                await self._advertise()
                await self._discover()
        except (RedisError, OSError, TimeoutError) as exc:
            raise BusUnavailable(f"cannot reach Redis at {self.url}: {exc}") from None
        self.healthy = True
        task_group.start_soon(self._inbox_loop, name="redis-inbox")
        task_group.start_soon(self._notification_loop, name="redis-notifications")
        task_group.start_soon(self._notice_loop, name="redis-notices")
        task_group.start_soon(self._heartbeat_loop, name="redis-heartbeat")

    def start_streams(self, task_group: TaskGroup) -> None:
        """Start reading the hosted services' streams (once their consumers are registered)."""
        task_group.start_soon(self._run_streams, name="redis-streams")

    async def _run_streams(self) -> None:
        with anyio.CancelScope() as self._receiving:
            if self._stop_receiving:
                return
            async with anyio.create_task_group() as group:
                for service in self._hosted:
                    group.start_soon(self._stream_loop, service, name=f"redis-stream:{service}")

    def stop_receiving(self) -> None:
        """Shutdown: take no more entries; unfinished ones are left for other replicas."""
        self._stop_receiving = True
        if self._receiving is not None:
            self._receiving.cancel()

    async def wait_idle(self) -> None:
        """Return once no task received here is still being worked on."""
        while self._inflight:
            self._idle = anyio.Event()
            await self._idle.wait()

    async def aclose(self) -> None:
        await super().aclose()
        with contextlib.suppress(Exception), anyio.move_on_after(1):  # leave discovery now
            await self.client.delete(self.key("replica", self.replica_id))
            await self.client.srem(self.key("replicas"), self.replica_id)
        for client in (self.client, self._blocking, self._listener):
            with contextlib.suppress(Exception):  # already gone with the server
                await client.aclose()

    def register_consumer(self, consumer: Consumer) -> Consumer:
        registered = super().register_consumer(consumer)
        self._advert_changed.set()  # a new reply address: tell the others soon
        return registered

    # -- publishing --------------------------------------------------------------------------
    async def publish(self, message: QueueMessage, timeout: float | None = -1.0) -> None:
        kind = message.type
        if message.action in (ActionTypes.CANCEL_TASK, ActionTypes.SEND_EVENT):
            await self._broadcast_to_hosts(message, timeout)
            return
        if kind == CONTROL_PLANE_NAME or self._by_type.get(kind):
            await super().publish(message, timeout)
            return
        try:
            if kind in self._remote:
                await self._xadd(self.key("stream", kind), message)
                return
            owner = self._owners.get(kind)
            if owner is None:
                await self._discover()
                owner = self._owners.get(kind)
            if owner is None:
                raise NoConsumer(kind)
            await self._xadd(self.key("inbox", owner), message, maxlen=INBOX_MAXLEN)
        except RedisError as exc:
            raise self._unavailable(exc) from None

    def has_consumer(self, message_type: str) -> bool:
        return super().has_consumer(message_type) or message_type in self._remote

    async def _broadcast_to_hosts(self, message: QueueMessage, timeout: float | None) -> None:
        """Cancels and events go to every replica hosting the service; the one running the
        task acts, the others find no such task and ignore it."""
        if self._by_type.get(message.type):
            await super().publish(message, timeout)
        replicas = self._remote.get(message.type, {}).get("replicas", [])
        for replica in replicas:
            if replica != self.replica_id:
                try:
                    await self._xadd(self.key("inbox", replica), message, maxlen=INBOX_MAXLEN)
                except RedisError as exc:
                    raise self._unavailable(exc) from None

    async def _xadd(self, stream: str, message: QueueMessage, maxlen: int | None = None) -> None:
        if self._advert_changed.is_set():
            await self._advertise()  # our reply address must be known before anyone answers
        await self.client.xadd(
            stream, {"m": message.model_dump_json()}, maxlen=maxlen, approximate=True
        )

    def _unavailable(self, exc: BaseException) -> BusUnavailable:
        self.healthy = False
        return BusUnavailable(f"the message transport (Redis) is unavailable: {exc}")

    # -- taking tasks at submission ---------------------------------------------------------
    def reserve_local(self, service: str, accepts: bool = True) -> Take | None:
        """A place for a task submitted here to be taken here at once (we host its service,
        we receive, it has room), or None.

        The stream loop's slots are spoken for by its pending blocking read, so local takes
        have their own bound (the service's concurrency), and the blocking read leaves the
        backlog to idle replicas as before. The take `starts` when the service (`accepts`
        work, i.e. is not paused) has a free slot for it counting every task in flight here:
        the submit script then records it `running` itself (no separate status write), and
        other deliveries to the service wait until it is delivered, so nothing takes its slot."""
        room = self._local_room.get(service, 0)
        if room <= 0 or self._stop_receiving or not self.healthy:
            return None
        self._local_room[service] = room - 1
        starts = accepts and (
            self._busy[service] + self._starting[service] < self._concurrency[service]
        )
        if starts:
            self._starting[service] += 1
        return Take(self.replica_id, starts)

    def unreserve_local(self, service: str, take: Take) -> None:
        """The submit script did not hand us an entry after all."""
        self._local_room[service] += 1
        self._started_one(service, take)

    async def receive_taken(
        self,
        service: str,
        entry_id: str,
        message: QueueMessage | None,
        raw: str | None,
        take: Take,
    ) -> None:
        """Run an entry the submit script read for us: `message` when it is the submitted
        task itself (passed on as the object, never re-parsed), else its `raw` JSON."""
        try:
            fields = {"m": raw or ""}
            await self._receive(service, entry_id, fields, LOCAL_SLOT, message, take.starts)
        finally:
            self._started_one(service, take)

    def _started_one(self, service: str, take: Take) -> None:
        if take.starts:
            self._starting[service] -= 1
            started, self._started = self._started, anyio.Event()
            started.set()

    async def _after_starts(self, service: str) -> None:
        """Wait while takes that start at once are still to be delivered to `service`."""
        while self._starting.get(service):
            await self._started.wait()

    def runs_here(self, task_id: str) -> bool:
        """Whether this replica works on `task_id` now (its end then wakes waiters here)."""
        return task_id in self._inflight

    # -- waking waiters ----------------------------------------------------------------------
    @contextlib.contextmanager
    def done_signal(self, task_id: str) -> Iterator[anyio.Event]:
        """An event of this waiter's own, set when `task_id` may have ended (re-check the record
        after it fires); forgotten when the block exits, whoever else waits for the task."""
        event = anyio.Event()
        self._done_waiters.setdefault(task_id, []).append(event)
        try:
            yield event
        finally:
            waiters = self._done_waiters.get(task_id)
            if waiters is not None and not event.is_set():
                waiters[:] = [w for w in waiters if w is not event]
                if not waiters:
                    del self._done_waiters[task_id]

    def event_signal(self, task_id: str) -> anyio.Event:
        event = self._event_waiters.get(task_id)
        if event is None:
            event = self._event_waiters[task_id] = anyio.Event()
        return event

    def wake_done(self, task_id: str) -> None:
        """`task_id` ended (here, or a notification said so): wake its waiters here at once."""
        for event in self._done_waiters.pop(task_id, ()):
            event.set()
        self._wake_events(task_id)

    def _wake_events(self, task_id: str) -> None:
        event = self._event_waiters.pop(task_id, None)
        if event is not None:
            event.set()

    def _wake_all(self) -> None:
        for task_id in list(self._done_waiters):
            self.wake_done(task_id)
        for task_id in list(self._event_waiters):
            self._wake_events(task_id)

    async def _notification_loop(self) -> None:
        """Our `note` channel: `d<task id>` (it ended), `e<task id>` (it has new events), sent
        only for tasks this replica registered to watch (see gateway.store.redis)."""
        channel, everyone = self.key("note", self.replica_id), self.key("all")
        backoff = _Backoff()
        while True:
            pubsub = self._listener.pubsub()
            try:
                await pubsub.subscribe(channel, everyone)
                self._wake_all()  # anything that ended while we were not listening
                backoff.reset()
                async for item in pubsub.listen():
                    if item.get("type") != "message":
                        continue
                    note = item["data"]
                    if item["channel"] == everyone:
                        if self.on_notice is not None:
                            self.on_notice(note)
                    elif note.startswith("d"):
                        self.wake_done(note[1:])
                    else:
                        self._wake_events(note[1:])
            except (RedisError, OSError) as exc:
                self._lost(exc)
                await backoff.sleep()
            finally:
                with anyio.CancelScope(shield=True):
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()

    def tell_all(self, notice: str) -> None:
        """Send `notice` to every replica (this one included), soon; e.g. a session was
        deleted or reset, so that they drop what they cache of it."""
        self._notices.append(notice)
        self._notices_dirty.set()

    async def send_notices(self) -> None:
        """Publish the notices queued so far now (raises RedisError if they could not be)."""
        batch, self._notices = self._notices, []
        if batch:
            async with self.client.pipeline(transaction=False) as pipe:
                for notice in batch:
                    pipe.publish(self.key("all"), notice)
                await pipe.execute()

    async def _notice_loop(self) -> None:
        while True:
            await self._notices_dirty.wait()
            self._notices_dirty = anyio.Event()
            try:
                await self.send_notices()
            except RedisError as exc:  # their caches are refreshed when a task runs there
                logger.warning("notice(s) to the other replicas lost: %s", exc)

    def _lost(self, exc: BaseException) -> None:
        if self.healthy:
            logger.warning("lost Redis (%s); reconnecting with back-off", exc)
        self.healthy = False

    # -- receiving tasks ---------------------------------------------------------------------
    async def _stream_loop(self, service: str) -> None:
        stream = self.key("stream", service)
        slots = self._slots[service]
        backoff = _Backoff()
        group_ready = False
        while True:
            await slots.acquire()
            taken = 1
            while taken < 64 and slots.value > 0:
                slots.acquire_nowait()
                taken += 1
            try:
                if not group_ready:
                    await _ensure_group(self._blocking, stream)
                    group_ready = True
                reply = await self._blocking.xreadgroup(
                    GROUP, self.replica_id, {stream: ">"}, count=taken, block=BLOCK_MS
                )
                self.healthy = True
                backoff.reset()
            except ResponseError as exc:
                for _ in range(taken):
                    slots.release()
                group_ready = False
                if "NOGROUP" in str(exc):  # Redis lost its data: make the group again
                    continue
                logger.warning("reading %s failed: %s", stream, exc)  # e.g. OOM, MISCONF
                await backoff.sleep()
                continue
            except (RedisError, OSError) as exc:
                for _ in range(taken):
                    slots.release()
                self._lost(exc)
                group_ready = False
                await backoff.sleep()
                continue
            entries = reply[0][1] if reply else []
            for _ in range(taken - len(entries)):
                slots.release()
            for entry_id, fields in entries:
                await self._receive(service, entry_id, fields, STREAM_SLOT)

    async def _receive(
        self,
        service: str,
        entry_id: str,
        fields: dict[str, str],
        slot: str,
        message: QueueMessage | None = None,
        starting: bool = False,
    ) -> None:
        stream = self.key("stream", service)
        if message is None:
            try:
                message = QueueMessage.model_validate_json(fields.get("m", ""))
            except ValueError:
                logger.error("dropped a malformed entry %s of %s", entry_id, stream)
                await self._ack(stream, entry_id)
                self._release(service, slot)
                return
        if message.action != ActionTypes.NEW_TASK:
            # Tool calls and the like are not tasks: no record to end, so taken at most once.
            await self._ack(stream, entry_id)
            self._release(service, slot)
            await self._deliver_locally(message)
            return
        task_id = str((message.data.get("task") or {}).get("task_id", ""))
        if task_id in self._inflight:  # we already run it (our own entry, claimed back)
            self._release(service, slot)
            return
        self._inflight[task_id] = _Flight(service, entry_id, slot)
        self._busy[service] = self._busy.get(service, 0) + 1
        try:
            if self.hooks is not None:
                await self.hooks.before_task(message)
        except Exception as exc:  # e.g. Redis went away: leave the entry to be claimed again
            logger.warning("could not prepare task %s (%s); it will be retried", task_id, exc)
            self.settle(task_id, abandoned=True)
            return
        if not starting:
            await self._after_starts(service)  # a take that starts at once has its slot
        await self._deliver_locally(message)

    async def _deliver_locally(self, message: QueueMessage) -> None:
        try:
            await MessageBus.publish(self, message, timeout=None)
        except NoConsumer:
            logger.warning("no local consumer for %s any more; message dropped", message.type)

    def settle(self, task_id: str, abandoned: bool = False) -> None:
        """This replica is done with `task_id`: it ended, or it was `abandoned` to be claimed
        again (then waiters here are woken to re-check and watch it wherever it runs next)."""
        if abandoned:
            self.wake_done(task_id)
        flight = self._inflight.pop(task_id, None)
        if flight is not None:
            self._busy[flight.service] -= 1
            self._release(flight.service, flight.slot)
            if not self._inflight:
                self._idle.set()

    def _release(self, service: str, slot: str) -> None:
        if slot == STREAM_SLOT:
            self._slots[service].release()
        elif slot == LOCAL_SLOT:
            self._local_room[service] += 1

    async def _ack(self, stream: str, entry_id: str) -> None:
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.xack(stream, GROUP, entry_id)
                pipe.xdel(stream, entry_id)
                await pipe.execute()
        except RedisError as exc:
            logger.warning("could not acknowledge %s on %s: %s", entry_id, stream, exc)

    # -- inbox -------------------------------------------------------------------------------
    async def _inbox_loop(self) -> None:
        inbox = self.key("inbox", self.replica_id)
        last = "0-0"
        backoff = _Backoff()
        while True:
            try:
                reply = await self._blocking.xread({inbox: last}, count=100, block=BLOCK_MS)
                backoff.reset()
            except (RedisError, OSError) as exc:
                self._lost(exc)
                await backoff.sleep()
                continue
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    last = entry_id
                    try:
                        message = QueueMessage.model_validate_json(fields.get("m", ""))
                    except ValueError:
                        logger.error("dropped a malformed inbox entry %s", entry_id)
                        continue
                    await self._deliver_locally(message)
                with contextlib.suppress(RedisError):
                    await self.client.xtrim(inbox, minid=last, approximate=False)

    # -- heartbeat: advertise, keep our entries, take over the dead's ------------------------
    async def _heartbeat_loop(self) -> None:
        while True:
            with anyio.move_on_after(self.heartbeat):
                await self._advert_changed.wait()
            failed: BaseException | None = None
            # Keeping our entries first: a Redis that refuses some writes must not let a
            # running task look idle and be taken over.
            for step in (self._keep_inflight, self._advertise, self._discover, self._claim_all):
                try:
                    await step()
                except (RedisError, OSError) as exc:
                    failed = exc
                    if write_refusal(exc) is None:
                        break  # the connection: the next steps would fail the same way
                except Exception:  # never let one bad entry stop heartbeats and take-overs
                    logger.exception("heartbeat of replica %s failed", self.replica_id)
            refused = write_refusal(failed) if failed is not None else None
            if failed is None:
                self.healthy = True
            elif refused is None:
                self._lost(failed)
            elif not self._refusing:  # reachable: say why once, not "lost"
                logger.warning("%s; adverts and take-overs wait for it", refused)
            self._refusing = refused is not None

    async def _claim_all(self) -> None:
        for service in self._hosted:
            await self._claim_idle(service)

    async def _advertise(self) -> None:
        self._advert_changed = anyio.Event()
        reply_types = [
            t for t in self._by_type if t not in self._hosted and t != CONTROL_PLANE_NAME
        ]
        advert = {"services": self._hosted, "consumers": reply_types}
        ttl = max(1, math.ceil(self.heartbeat * 3))
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.set(self.key("replica", self.replica_id), json.dumps(advert), ex=ttl)
            pipe.sadd(self.key("replicas"), self.replica_id)  # an index: discovery never SCANs
            await pipe.execute()

    async def _discover(self) -> None:
        replicas = sorted(await self.client.smembers(self.key("replicas")))
        keys = [self.key("replica", replica) for replica in replicas]
        adverts = await self.client.mget(keys) if keys else []
        remote: dict[str, dict[str, Any]] = {}
        owners: dict[str, str] = {}
        gone = [replica for replica, raw in zip(replicas, adverts, strict=True) if raw is None]
        if gone:  # their adverts expired: they died without saying goodbye
            await self.client.srem(self.key("replicas"), *gone)
        for replica, raw in zip(replicas, adverts, strict=True):
            if raw is None:
                continue
            advert = json.loads(raw)
            for name, definition in advert.get("services", {}).items():
                entry = remote.setdefault(name, {"definition": definition, "replicas": []})
                entry["replicas"].append(replica)
            for reply_type in advert.get("consumers", []):
                owners[reply_type] = replica
        self._remote, self._owners = remote, owners
        if self.on_discovery is not None:
            self.on_discovery(remote)

    async def _keep_inflight(self) -> None:
        """Reset the idle time of entries still being worked on here, so none is stolen."""
        by_service: dict[str, list[str]] = {}
        for flight in self._inflight.values():
            by_service.setdefault(flight.service, []).append(flight.entry_id)
        for service, ids in by_service.items():
            for start in range(0, len(ids), 256):
                await self.client.xclaim(
                    self.key("stream", service),
                    GROUP,
                    self.replica_id,
                    0,
                    ids[start : start + 256],
                    justid=True,
                )

    async def _claim_idle(self, service: str) -> None:
        stream = self.key("stream", service)
        idle_ms = int(self.claim_idle * 1000)
        try:
            _, entries, *_ = await self.client.xautoclaim(
                stream, GROUP, self.replica_id, idle_ms, "0-0", count=100
            )
        except ResponseError:  # no group yet: nothing to claim
            return
        for entry_id, fields in entries:
            if fields is None:
                continue
            pending = await self.client.xpending_range(stream, GROUP, entry_id, entry_id, 1)
            deliveries = pending[0]["times_delivered"] if pending else 1
            await self._take_over(service, entry_id, fields, deliveries)

    async def _take_over(
        self, service: str, entry_id: str, fields: dict[str, str], deliveries: int
    ) -> None:
        stream = self.key("stream", service)
        try:
            message = QueueMessage.model_validate_json(fields.get("m", ""))
        except ValueError:
            await self._ack(stream, entry_id)
            return
        task_id = str((message.data.get("task") or {}).get("task_id", ""))
        if task_id in self._inflight:
            return
        hooks = self.hooks
        if message.action == ActionTypes.NEW_TASK and hooks is not None:
            if await hooks.task_is_over(task_id):
                await self._ack(stream, entry_id)
                return
            if deliveries > self.max_deliveries:
                logger.warning("task %s: gave up after %d deliveries", task_id, deliveries - 1)
                await self.client.xadd(
                    self.key("dead", service), {"m": fields.get("m", ""), "entry": entry_id}
                )
                await hooks.give_up(message, deliveries - 1)
                return
        logger.info("took over entry %s of %s (delivery %d)", entry_id, service, deliveries)
        await self._receive(service, entry_id, fields, NO_SLOT)


async def _ensure_group(client: Redis, stream: str) -> None:
    try:
        await client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class _Backoff:
    """Reconnect delays: 0.05 s doubling up to MAX_BACKOFF."""

    def __init__(self) -> None:
        self.delay = 0.05

    def reset(self) -> None:
        self.delay = 0.05

    async def sleep(self) -> None:
        await anyio.sleep(self.delay)
        self.delay = min(MAX_BACKOFF, self.delay * 2)
