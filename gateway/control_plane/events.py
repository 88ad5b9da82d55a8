"""Per-task live event streams with bounded replay and bounded per-subscriber buffers.

Publishing never waits: a subscriber whose buffer is full is dropped (it sees a final error
event), so a slow reader can stall neither the task nor the other readers.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from gateway.messages import TaskEvent


@dataclass(slots=True)
class _Subscriber:
    send: MemoryObjectSendStream[TaskEvent]
    lagged: bool = False


@dataclass(slots=True)
class _Channel:
    """Replay is kept as compact JSON (a waiting task costs bytes, not pydantic objects)."""

    replay: list[str] = field(default_factory=list)
    subscribers: list[_Subscriber] = field(default_factory=list)
    closed: bool = False


class Subscription:
    """An async iterator of a task's events: the replay first, then live ones, then the end."""

    def __init__(self, hub: TaskEventHub, task_id: str, backlog: list[TaskEvent], sub) -> None:
        self._hub = hub
        self._task_id = task_id
        self._backlog = backlog
        self._sub: _Subscriber | None = sub
        self._receive = None

    async def __aiter__(self) -> AsyncIterator[TaskEvent]:
        for event in self._backlog:
            yield event
        if self._sub is None:
            return
        async for event in self._receive:
            yield event
        if self._sub.lagged:
            yield TaskEvent(
                task_id=self._task_id,
                kind="error",
                name="subscriber_lagged",
                data={"detail": "this subscriber fell too far behind and was dropped"},
            )

    def close(self) -> None:
        if self._sub is not None:
            self._hub._unsubscribe(self._task_id, self._sub)
        if self._receive is not None:
            self._receive.close()


class TaskEventHub:
    def __init__(
        self, replay_size: int = 256, subscriber_buffer: int = 256, retain_closed: int = 1000
    ) -> None:
        self.replay_size = replay_size
        self.subscriber_buffer = subscriber_buffer
        self.retain_closed = retain_closed
        self._channels: dict[str, _Channel] = {}
        self._closed_order: OrderedDict[str, None] = OrderedDict()

    @property
    def subscriber_count(self) -> int:
        return sum(len(c.subscribers) for c in self._channels.values())

    def has_subscribers(self, task_id: str) -> bool:
        channel = self._channels.get(task_id)
        return bool(channel and channel.subscribers)

    def __contains__(self, task_id: str) -> bool:
        """Whether events of this task are kept (live, or the replay of a recently closed one)."""
        return task_id in self._channels

    def _channel(self, task_id: str) -> _Channel:
        channel = self._channels.get(task_id)
        if channel is None:
            channel = _Channel()
            self._channels[task_id] = channel
        return channel

    def publish(self, event: TaskEvent) -> None:
        channel = self._channel(event.task_id)
        if channel.closed:
            return
        if self.replay_size:
            channel.replay.append(event.model_dump_json())
            if len(channel.replay) > self.replay_size:
                del channel.replay[0]
        for sub in list(channel.subscribers):
            try:
                sub.send.send_nowait(event)
            except anyio.WouldBlock:
                sub.lagged = True
                self._unsubscribe(event.task_id, sub)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                self._unsubscribe(event.task_id, sub)

    def close(self, task_id: str) -> None:
        """The task ended: subscribers finish after what they have; replay stays for latecomers."""
        channel = self._channel(task_id)
        channel.closed = True
        for sub in list(channel.subscribers):
            self._unsubscribe(task_id, sub)
        self._closed_order[task_id] = None
        while len(self._closed_order) > self.retain_closed:
            old, _ = self._closed_order.popitem(last=False)
            self._channels.pop(old, None)

    def forget(self, task_id: str) -> None:
        """Drop a channel whose task was never accepted."""
        channel = self._channels.pop(task_id, None)
        if channel is not None:
            for sub in list(channel.subscribers):
                self._unsubscribe(task_id, sub)

    def subscribe(self, task_id: str) -> Subscription:
        channel = self._channel(task_id)
        backlog = [TaskEvent.model_validate_json(raw) for raw in channel.replay]
        if channel.closed:
            return Subscription(self, task_id, backlog, None)
        send, receive = anyio.create_memory_object_stream[TaskEvent](self.subscriber_buffer)
        sub = _Subscriber(send)
        channel.subscribers.append(sub)
        subscription = Subscription(self, task_id, backlog, sub)
        subscription._receive = receive
        return subscription

    def _unsubscribe(self, task_id: str, sub: _Subscriber) -> None:
        channel = self._channels.get(task_id)
        if channel is not None and sub in channel.subscribers:
            channel.subscribers.remove(sub)
        sub.send.close()
