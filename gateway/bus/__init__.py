"""The bus: how messages reach consumers, whatever carries them.

It owns the `Consumer` contract and the errors every transport raises; the transports are
`memory` (one process, objects by reference), `http_remote` (a service that registered over
HTTP) and `redis` (Streams, for several processes). It knows messages, never services, the
control plane or the app.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.messages import QueueMessage, new_id

Handler = Callable[[QueueMessage], Awaitable[Any]]
ErrorHook = Callable[[QueueMessage, BaseException], Awaitable[None]]
DirectHandler = Callable[[Any], Awaitable[Any]]


class _Declined:
    """What a consumer's `direct` way in returns for a payload it wants as a message instead."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "DECLINED"


DECLINED: Any = _Declined()


class BusError(Exception):
    """Base class of bus failures the HTTP layer knows how to answer."""


class NoConsumer(BusError):
    def __init__(self, message_type: str) -> None:
        super().__init__(f"no consumer is registered for message type {message_type!r}")
        self.message_type = message_type


class BusFull(BusError):
    def __init__(self, message_type: str, retry_after: float) -> None:
        super().__init__(f"the queue of {message_type!r} is full; retry later")
        self.message_type = message_type
        self.retry_after = retry_after


class BusUnavailable(BusError):
    """The transport (Redis) cannot be reached right now; the caller may retry."""

    def __init__(self, detail: str, retry_after: float = 1.0) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


@dataclass
class Consumer:
    """Something that handles messages of one type. `handler` must not block the loop for long.

    `inline`: the handler only hands the message on (sets an event, feeds a bounded worker
    queue), so `publish` calls it directly instead of through a stream and a receive loop; that
    saves two event-loop hops per message. Its own hand-off must bound what it buffers.
    """

    message_type: str
    handler: Handler
    id_: str = field(default_factory=new_id)
    inline: bool = False
    # An inline consumer's second way in, for a publisher that waits for the answer anyway
    # (`MessageBus.call_direct`): the payload object, with no envelope; it returns the answer,
    # or DECLINED to be sent the payload as a message after all.
    direct: DirectHandler | None = None
