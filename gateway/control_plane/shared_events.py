"""Event streams of a deployment spread over replicas: a task's own stream, read from Redis on
any replica (`SharedSubscription`), and the aggregate live feed (`GET /control_plane/events`).

Why one Redis stream per namespace, and not pub/sub (the wake-ups of single tasks use pub/sub):

- The scripts that change a task's status append the feed entry in the same atomic step, so
  the feed costs no round trip on the task path and its order is Redis's order of the changes.
- Positions come from one counter (entry ids are `<n>-0`): a feed id means the same thing on
  every replica, so a client behind a load balancer can resume (`Last-Event-ID`) on any of them,
  and the replay after a reconnect comes from Redis, not from what one replica happened to hear.
- Only a replica with feed subscribers reads it: one blocking read (XREAD BLOCK) while anyone
  watches, nothing otherwise. Pub/sub would wake every replica on every status change of every
  task whether or not anyone watched, which is the per-task cost the task path got rid of.

While it has subscribers, a replica mirrors the stream into the ordinary feed channel of its
event hub (the same bounded, numbered log as in one process: `gap` events for positions no
longer held, readers that never block the writer); the mirror starts from the stream's tail and
is dropped when the last subscriber leaves. Entries that are not task status changes (human
queue changes) are appended to the stream by a small writer, so they reach every replica too.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

import anyio
from redis.exceptions import RedisError

from gateway.bus.redis import BLOCK_MS, RedisBus
from gateway.control_plane.events import Channel, Subscription, TaskEventHub
from gateway.control_plane.plane import ControlPlane
from gateway.messages import TaskEvent
from gateway.store.redis import RedisStore, feed_entry
from gateway.web.errors import ApiError

logger = logging.getLogger("gateway.control_plane.shared_events")

READ_COUNT = 256
RETRY_DELAY = 1.0  # after a failed read, before the mirror is rebuilt (Redis away)


class SharedEventHub(TaskEventHub):
    """A `TaskEventHub` whose aggregate feed is the deployment's, read from Redis."""

    def __init__(self, store: RedisStore, **sizes: int) -> None:
        super().__init__(**sizes)
        self._store = store
        self._wanted = anyio.Event()  # set by the first subscriber of an idle mirror
        self._ready = anyio.Event()  # set once the mirror holds the tail and follows
        self._live = False
        self._opening = 0  # subscribers waiting for the mirror to be ready
        self._outbox: list[TaskEvent] = []
        self._outbox_dirty = anyio.Event()

    # -- writing ---------------------------------------------------------------------------
    def publish_feed(self, event: TaskEvent) -> int:
        """Queue an entry for the deployment's feed; its position is known once written."""
        self._outbox.append(event)
        self._outbox_dirty.set()
        return 0

    async def write_loop(self) -> None:
        """Append queued entries, in order (lost if Redis stays away: the feed is live-only)."""
        while True:
            await self._outbox_dirty.wait()
            self._outbox_dirty = anyio.Event()
            batch, self._outbox = self._outbox, []
            for event in batch:
                try:
                    await self._store.append_feed(event)
                except RedisError as exc:
                    logger.warning("feed entry of %s not written: %s", event.task_id, exc)

    # -- reading ---------------------------------------------------------------------------
    async def open_feed(self, after: int, keep: Callable[[str], bool] | None) -> Subscription:
        """A subscription to the feed after position `after`, once the mirror follows."""
        if not self._live:
            self._wanted.set()
            self._opening += 1
            try:
                with anyio.move_on_after(5):
                    await self._ready.wait()
            finally:
                self._opening -= 1
            if not self._live:
                unavailable = "the shared feed (Redis) is unavailable"
                raise ApiError(503, unavailable, headers={"Retry-After": "2"})
        return self.subscribe_feed(after, keep)

    async def follow_loop(self) -> None:
        """Mirror the feed stream while this replica has feed subscribers."""
        while True:
            await self._wanted.wait()
            try:
                await self._mirror()
            except (RedisError, OSError) as exc:
                logger.warning("the shared feed stopped (%s); rebuilt on the next subscriber", exc)
                self._stop()
                self.feed.close()  # its readers end; their clients reconnect and resume
                await anyio.sleep(RETRY_DELAY)

    async def _mirror(self) -> None:
        tail = await self._store.feed_tail(self.feed.size)
        self.feed = Channel(self.feed.size)  # no reader holds the old one: the mirror was idle
        for position, event in tail:
            self._append(position, event)
        last = tail[-1][0] if tail else 0
        self._live = True
        self._ready.set()
        key = self._store.key("feed")
        client = self._store.client
        while self.feed.readers or self._opening:
            reply = await client.xread({key: f"{last}-0"}, count=READ_COUNT, block=BLOCK_MS)
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    position, event = feed_entry(entry_id, fields)
                    self._append(position, event)
                    last = position
        self._stop()

    def _stop(self) -> None:
        """Back to idle: the next subscriber rebuilds the mirror from the stream's tail."""
        self._live = False
        self._wanted = anyio.Event()
        self._ready = anyio.Event()

    def _append(self, position: int, event: TaskEvent) -> None:
        self.feed.next_seq = position  # positions are the stream's: the same on every replica
        self.feed.append(event)


class SharedSubscription:
    """A task's events from its Redis stream: held ones after `after`, then live ones, up to
    the result. Works on any replica, whichever one runs the task; woken by the notes the
    store's scripts send to replicas watching the task. Events no longer held (trimmed to
    `events.replay_size`) are announced by a `gap` event, as in one process."""

    def __init__(self, store: RedisStore, bus: RedisBus, task_id: str, after: int = 0) -> None:
        self._store, self._bus = store, bus
        self._task_id = task_id
        self._cursor = max(after, 0)

    async def frames(self) -> AsyncIterator[tuple[int, str, str]]:
        store, bus = self._store, self._bus
        last = "0-0"
        watching = False
        while True:
            signal = bus.event_signal(self._task_id)
            batch = await store.read_events(self._task_id, last)
            for entry_id, event in batch:
                last = entry_id
                seq = event.seq or 0
                if seq <= self._cursor:
                    continue
                if seq > self._cursor + 1:
                    yield self._gap(seq)
                self._cursor = seq
                yield seq, event.kind, event.model_dump_json()
                if event.kind == "result":
                    return
            if batch:
                continue
            if watching:
                record = await store.fetch_task(self._task_id)
            else:  # from now on, its events are announced to this replica
                record = await store.watch_task(self._task_id, bus.replica_id)
            if record is None:
                return
            if record.is_terminal:  # its result event expired with the stream
                event = ControlPlane._result_event(record).model_copy(
                    update={"seq": record.last_seq}
                )
                if record.last_seq > self._cursor:
                    yield record.last_seq, "result", event.model_dump_json()
                return
            if not watching:
                watching = True
                continue  # events written before the watch began are read, not waited for
            await signal.wait()

    def _gap(self, first: int) -> tuple[int, str, str]:
        event = TaskEvent(
            task_id=self._task_id,
            kind="gap",
            name="gap",
            seq=first - 1,
            data={
                "after": self._cursor,
                "first_available": first,
                "dropped": first - self._cursor - 1,
            },
        )
        return first - 1, "gap", event.model_dump_json()

    async def __aiter__(self) -> AsyncIterator[TaskEvent]:
        async for _, _, raw in self.frames():
            yield TaskEvent.model_validate_json(raw)

    def close(self) -> None:
        """Nothing to release: the stream is read on demand."""
