"""Event streams: per-task channels and one aggregate feed, each a bounded, numbered log.

Every event gets the next sequence number of its channel (`seq`, sent as the SSE `id:`). A
channel keeps its latest `size` events; readers are cursors into that log, woken by an event,
so publishing never waits and a slow reader holds no buffer of its own. A reader asking for
events that are no longer held gets an explicit `gap` event first (never a silent jump), and
since a task's `result` is its last event, the result is always still held for every reader.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable

import anyio

from gateway.messages import TaskEvent, TaskStatus

# One held event: (seq, kind, its JSON). The JSON is what SSE writes, so it is serialized once.
Entry = tuple[int, str, str]


class Deferred:
    """An event held as what it is made from, written as JSON only if a reader asks for it.

    Most events are never read (nobody follows a `/run` that answers at once), so the task
    path builds no TaskEvent model and writes no JSON for them.
    """

    __slots__ = ()

    def json(self, seq: int) -> str:
        raise NotImplementedError


# A plain status change of the channel's task is held as (seq, "status", status, at), a third
# of the bytes; (seq, kind, Deferred) is written when read.
Held = Entry | tuple[int, str, TaskStatus, float] | tuple[int, str, Deferred]


class FeedStatus(Deferred):
    """A task's status change on the aggregate feed."""

    __slots__ = ("task_id", "status", "service", "session_id", "task_seq", "at")

    def __init__(
        self, task_id: str, status: TaskStatus, service: str, session_id: str | None, task_seq: int
    ) -> None:
        self.task_id = task_id
        self.status = status
        self.service = service
        self.session_id = session_id
        self.task_seq = task_seq
        self.at = time.time()

    def json(self, seq: int) -> str:
        data = {"service": self.service, "session_id": self.session_id, "task_seq": self.task_seq}
        return TaskEvent(
            task_id=self.task_id, kind="status", status=self.status, data=data, at=self.at, seq=seq
        ).model_dump_json()


class Channel:
    """A numbered, bounded log of events with a wake-up for readers waiting at its end."""

    __slots__ = ("key", "entries", "size", "next_seq", "closed", "readers", "_wake")

    def __init__(self, size: int, first_seq: int = 1, key: str = "") -> None:
        self.key = key  # the task whose events these are ("" for the aggregate feed)
        # A list, trimmed by hand: a deque(maxlen=...) allocates ~700 bytes up front, and a
        # gateway holds a channel for every live task (most of them keep a few events).
        self.entries: list[Held] = []
        self.size = max(size, 1)
        self.next_seq = first_seq
        self.closed = False
        self.readers = 0
        self._wake: anyio.Event | None = None

    @property
    def first_held(self) -> int:
        return self.entries[0][0] if self.entries else self.next_seq

    def append(self, event: TaskEvent) -> int:
        """Number the event, keep it, wake readers; never waits."""
        seq = event.seq = self.next_seq
        if (
            event.kind == "status"
            and event.status is not None
            and event.task_id == self.key
            and not event.name
            and not event.data
            and event.envelope is None
        ):
            return self._keep((seq, "status", event.status, event.at))
        return self._keep((seq, event.kind, event.model_dump_json()))

    def append_status(self, status: TaskStatus, at: float) -> int:
        """`append` of this task's bare status change, without its TaskEvent."""
        return self._keep((self.next_seq, "status", status, at))

    def append_deferred(self, kind: str, event: Deferred) -> int:
        """Number and keep an event that is written only if read; never waits."""
        return self._keep((self.next_seq, kind, event))

    def _keep(self, held: Held) -> int:
        """Keep `held` (numbered `next_seq`) within the bound and wake readers."""
        seq = held[0]
        self.next_seq = seq + 1
        self.entries.append(held)
        if len(self.entries) > self.size:
            del self.entries[0]
        self._notify()
        return seq

    def close(self) -> None:
        self.closed = True
        self._notify()

    def _notify(self) -> None:
        if self._wake is not None:
            self._wake.set()
            self._wake = None

    def after(self, cursor: int) -> list[Entry]:
        """Held entries with seq > cursor (a copy: the log may move while it is written out)."""
        first = self.first_held
        start = max(cursor + 1 - first, 0)
        entries = self.entries
        batch: list[Entry] = []
        for index in range(start, len(entries)):
            held = entries[index]
            if len(held) != 3 or type(held[2]) is not str:
                # Written the first time a reader asks, and kept written: the next readers (each
                # open console follows the feed) get the same text without writing it again.
                held = entries[index] = self._written(held)
            batch.append(held)  # type: ignore[arg-type]
        return batch

    def _written(self, held: Held) -> Entry:
        if len(held) == 3:
            seq, kind, deferred = held
            return (seq, kind, deferred.json(seq))  # type: ignore[union-attr]
        seq, kind, status, at = held  # type: ignore[misc]
        event = TaskEvent(task_id=self.key, kind="status", status=status, at=at, seq=seq)
        return (seq, kind, event.model_dump_json())

    async def wait(self) -> None:
        if self._wake is None:
            self._wake = anyio.Event()
        await self._wake.wait()


class Subscription:
    """A reader of one channel: held events after its cursor, then live ones, until the end.

    Iterate it for `TaskEvent`s, or use `frames()` for (seq, kind, json) without re-parsing.
    """

    def __init__(
        self,
        channel: Channel,
        key: str,
        after: int = 0,
        lost_before: int = 0,
        keep: Callable[[str], bool] | None = None,
    ) -> None:
        self._channel = channel
        self._key = key
        # An id never issued counts as "up to date": the reader then still gets what follows
        # (and the result), instead of waiting for numbers the channel will never reach.
        self._cursor = min(max(after, 0), channel.next_seq - 1)
        self._lost_before = lost_before
        self._keep = keep
        self._open = True
        channel.readers += 1

    @property
    def cursor(self) -> int:
        return self._cursor

    async def frames(self) -> AsyncIterator[Entry]:
        channel = self._channel
        try:
            # Events before `lost_before` existed but were never held here (evicted, restart).
            first_wanted = self._cursor + 1
            if first_wanted < max(channel.first_held, self._lost_before + 1):
                yield self._gap()
            while True:
                batch = channel.after(self._cursor)
                if batch and batch[0][0] > self._cursor + 1:
                    yield self._gap()  # fell behind the bound while reading
                    continue
                for entry in batch:
                    self._cursor = entry[0]
                    if self._keep is None or self._keep(entry[2]):
                        yield entry
                if batch:
                    continue
                if channel.closed:
                    return
                await channel.wait()
        finally:
            self.close()

    def _gap(self) -> Entry:
        first = max(self._channel.first_held, self._lost_before + 1)
        after = self._cursor
        event = TaskEvent(
            task_id=self._key,
            kind="gap",
            name="gap",
            seq=first - 1,
            data={"after": after, "first_available": first, "dropped": first - after - 1},
        )
        self._cursor = first - 1
        return (first - 1, "gap", event.model_dump_json())

    async def __aiter__(self) -> AsyncIterator[TaskEvent]:
        async for _, _, raw in self.frames():
            yield TaskEvent.model_validate_json(raw)

    def close(self) -> None:
        if self._open:
            self._open = False
            self._channel.readers -= 1


class TaskEventHub:
    """Per-task channels (kept `retain_closed` tasks after their end) and the aggregate feed."""

    def __init__(
        self, replay_size: int = 256, retain_closed: int = 1000, feed_size: int = 1024
    ) -> None:
        self.replay_size = replay_size
        self.retain_closed = retain_closed
        self._channels: dict[str, Channel] = {}
        self._lost_before: dict[str, int] = {}
        self._closed_order: OrderedDict[str, None] = OrderedDict()
        self.feed = Channel(feed_size)

    @property
    def subscriber_count(self) -> int:
        return sum(c.readers for c in self._channels.values()) + self.feed.readers

    def has_subscribers(self, task_id: str) -> bool:
        channel = self._channels.get(task_id)
        return bool(channel and channel.readers)

    def __contains__(self, task_id: str) -> bool:
        """Whether events of this task are kept (live, or the replay of a recently closed one)."""
        return task_id in self._channels

    def _channel(self, task_id: str) -> Channel:
        channel = self._channels.get(task_id)
        if channel is None:
            channel = self._channels[task_id] = Channel(self.replay_size, key=task_id)
        return channel

    def open(self, task_id: str, last_seq: int) -> None:
        """A task known from before (restart, eviction): its numbering goes on after `last_seq`,
        and a reader asking for earlier events is told they are gone."""
        if task_id not in self._channels:
            self._channels[task_id] = Channel(self.replay_size, first_seq=last_seq + 1, key=task_id)
            if last_seq:
                self._lost_before[task_id] = last_seq

    def publish(self, event: TaskEvent) -> int:
        """Append to the task's channel; returns the event's seq (0 if the task has ended)."""
        channel = self._channel(event.task_id)
        if channel.closed:
            return 0
        return channel.append(event)

    def publish_status(self, task_id: str, status: TaskStatus) -> int:
        """`publish` of a bare status change, kept as what `Channel.append` would keep for it."""
        channel = self._channel(task_id)
        if channel.closed:
            return 0
        return channel.append_status(status, time.time())

    def publish_deferred(self, task_id: str, kind: str, event: Deferred) -> int:
        """`publish` for an event written only if read (0 if the task has ended)."""
        channel = self._channel(task_id)
        if channel.closed:
            return 0
        return channel.append_deferred(kind, event)

    def publish_feed(self, event: TaskEvent | Deferred, kind: str = "status") -> int:
        if isinstance(event, Deferred):
            return self.feed.append_deferred(kind, event)
        return self.feed.append(event)

    def close(self, task_id: str) -> None:
        """The task ended: readers finish after what is held; it stays for latecomers."""
        self._channel(task_id).close()
        self._closed_order[task_id] = None
        while len(self._closed_order) > self.retain_closed:
            old, _ = self._closed_order.popitem(last=False)
            self._channels.pop(old, None)
            self._lost_before.pop(old, None)

    def forget(self, task_id: str) -> None:
        """Drop a channel whose task was never accepted, or the stream of an ended task whose
        id a new task takes (it left the task table): the new one starts its own."""
        channel = self._channels.pop(task_id, None)
        self._lost_before.pop(task_id, None)
        self._closed_order.pop(task_id, None)
        if channel is not None:
            channel.close()

    def subscribe(self, task_id: str, after: int = 0) -> Subscription:
        channel = self._channel(task_id)
        return Subscription(channel, task_id, after, self._lost_before.get(task_id, 0))

    def subscribe_feed(
        self, after: int = 0, keep: Callable[[str], bool] | None = None
    ) -> Subscription:
        return Subscription(self.feed, "", after, keep=keep)
