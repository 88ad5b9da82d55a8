"""The in-memory message bus: one bounded anyio stream and one receive loop per consumer.

Publishing hands a message to one consumer of its type (round robin). Consumers block on their
stream; nothing polls. A full stream makes `publish` wait up to a bound and then raise `BusFull`,
which the HTTP layer answers with 503 + Retry-After.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
import httpx
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from gateway.bus import DECLINED, BusFull, Consumer, ErrorHook, NoConsumer
from gateway.bus.http_remote import RemoteConsumer
from gateway.contain import is_our_cancellation
from gateway.messages import QueueMessage

logger = logging.getLogger("gateway.bus")

RECEIVE_BURST = 64  # messages a receive loop takes in a row before letting other tasks run


@dataclass
class _Registration:
    consumer: Consumer
    send: MemoryObjectSendStream[QueueMessage]
    receive: MemoryObjectReceiveStream[QueueMessage]
    delivered: int = 0
    failed: int = 0
    restarts: int = 0
    in_flight: QueueMessage | None = None


class MessageBus:
    """Routes messages by `type` to registered consumers inside the owner's task group."""

    def __init__(
        self,
        buffer_size: int = 1024,
        publish_timeout: float = 1.0,
        on_handler_error: ErrorHook | None = None,
    ) -> None:
        self.buffer_size = buffer_size
        self.publish_timeout = publish_timeout
        self.on_handler_error = on_handler_error
        self._by_type: dict[str, list[_Registration]] = {}
        self._by_id: dict[str, _Registration] = {}
        self._next: dict[str, int] = {}
        self._task_group: TaskGroup | None = None
        self._http: httpx.AsyncClient | None = None
        self.tracing: Any = None  # gateway.observe.tracing.Tracing when tracing is on

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, task_group: TaskGroup) -> None:
        """Bind to the owner's task group and start the loops of consumers registered so far."""
        self._task_group = task_group
        for registration in self._by_id.values():
            if not registration.consumer.inline:
                task_group.start_soon(self._supervise, registration, name=_loop_name(registration))

    async def aclose(self) -> None:
        for registration in list(self._by_id.values()):
            registration.send.close()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # -- registration ----------------------------------------------------------------------
    def register_consumer(self, consumer: Consumer) -> Consumer:
        if consumer.id_ in self._by_id:
            raise ValueError(f"consumer {consumer.id_!r} is already registered")
        if isinstance(consumer, RemoteConsumer) and consumer.client is None:
            if self._http is None:
                self._http = httpx.AsyncClient(timeout=30)
            consumer.client = self._http
        send, receive = anyio.create_memory_object_stream[QueueMessage](self.buffer_size)
        registration = _Registration(consumer, send, receive)
        self._by_id[consumer.id_] = registration
        self._by_type.setdefault(consumer.message_type, []).append(registration)
        if self._task_group is not None and not consumer.inline:
            self._task_group.start_soon(
                self._supervise, registration, name=_loop_name(registration)
            )
        return consumer

    def deregister_consumer(self, consumer_id: str) -> None:
        registration = self._by_id.pop(consumer_id, None)
        if registration is None:
            return
        peers = self._by_type.get(registration.consumer.message_type, [])
        if registration in peers:
            peers.remove(registration)
        if not peers:
            self._by_type.pop(registration.consumer.message_type, None)
        registration.send.close()

    def has_consumer(self, message_type: str) -> bool:
        return bool(self._by_type.get(message_type))

    # -- publishing ------------------------------------------------------------------------
    async def publish(self, message: QueueMessage, timeout: float | None = -1.0) -> None:
        """Deliver to one consumer of `message.type`.

        `timeout` bounds the wait for room in a full buffer: -1 means the bus default, None
        means wait as long as it takes (used for results, which must never be dropped).
        """
        if self.tracing is not None and message.trace is None:
            message.trace = self.tracing.carrier()
        peers = self._by_type.get(message.type)
        if not peers:
            raise NoConsumer(message.type)
        index = self._next.get(message.type, 0)
        registration = peers[index % len(peers)]
        self._next[message.type] = index + 1
        # The times go straight into the stats' dict: pydantic's __setattr__ costs more than the
        # write, three per delivery, and QueueMessageStats has nothing to validate.
        message.stats.__dict__["publish_time"] = time.time()
        if registration.consumer.inline:
            await self._handle(registration, message)
            return
        try:
            registration.send.send_nowait(message)
            return
        except anyio.WouldBlock:
            pass
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise NoConsumer(message.type) from None
        wait = self.publish_timeout if timeout == -1.0 else timeout
        try:
            with anyio.fail_after(math.inf if wait is None else wait):
                await registration.send.send(message)
        except TimeoutError:
            raise BusFull(message.type, retry_after=max(1.0, self.publish_timeout)) from None
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise NoConsumer(message.type) from None

    async def call_direct(self, message_type: str, body: Any) -> Any:
        """Hand `body` (a payload object) to the consumer of `message_type` and return its
        answer, with no message around it, if that consumer is the only one, runs in this
        process within the call (inline) and takes payloads as is (`Consumer.direct`, a tool
        service); else DECLINED, and the caller publishes a message as usual.

        For a caller that waits for the answer anyway: the envelope's ids, times and routing
        are work nobody would read (the publish and delivery times are only ever written).
        The delivery counts in `stats()` as one. With tracing on, calls go as messages: the
        envelope is what carries the trace context. None: the consumer failed (logged), no
        answer will come.
        """
        if self.tracing is not None:
            return DECLINED
        peers = self._by_type.get(message_type)
        if peers is None or len(peers) != 1:
            return DECLINED
        registration = peers[0]
        direct = registration.consumer.direct
        if direct is None or not registration.consumer.inline:
            return DECLINED
        try:
            answer = await direct(body)
        except BaseException as exc:
            # It answers everything itself, so this is a bug of ours; as a failed delivery of
            # a message (`_handle`), it is logged and counted, and the caller gets no answer.
            if is_our_cancellation(exc):
                raise
            registration.failed += 1
            logger.exception(
                "consumer %s failed on a call handed over as is", registration.consumer.id_
            )
            return None
        if answer is not DECLINED:
            registration.delivered += 1
        return answer

    # -- observability ---------------------------------------------------------------------
    def stats(self) -> list[dict[str, Any]]:
        return [
            {
                "consumer_id": r.consumer.id_,
                "message_type": r.consumer.message_type,
                "queued": r.send.statistics().current_buffer_used,
                "delivered": r.delivered,
                "failed": r.failed,
                "restarts": r.restarts,
            }
            for r in self._by_id.values()
        ]

    # -- receive loops ---------------------------------------------------------------------
    async def _supervise(self, registration: _Registration) -> None:
        """Run the receive loop; if it ever dies of something unexpected, start it again."""
        while registration.consumer.id_ in self._by_id:
            try:
                await self._receive_loop(registration)
                return
            except BaseException as exc:
                if is_our_cancellation(exc):
                    raise
                registration.restarts += 1
                logger.exception(
                    "receive loop of %s crashed; restarting", registration.consumer.id_
                )
                # The message the loop was handling is lost with it: report its failure.
                message, registration.in_flight = registration.in_flight, None
                if message is not None:
                    registration.failed += 1
                    await self._report_failure(message, exc)
                # Never spin: a loop that dies at once every time must not starve the others.
                await anyio.sleep(min(1.0, 0.01 * registration.restarts))

    async def _receive_loop(self, registration: _Registration) -> None:
        # `receive()` yields to the event loop before taking even a buffered message; take what
        # is there without that extra round trip, and yield every RECEIVE_BURST messages so a
        # consumer whose handler never suspends cannot starve the other tasks.
        receive = registration.receive
        in_a_row = 0
        while True:
            try:
                message = receive.receive_nowait()
                in_a_row += 1
                if in_a_row >= RECEIVE_BURST:
                    in_a_row = 0
                    await anyio.lowlevel.checkpoint()
            except anyio.WouldBlock:
                in_a_row = 0
                try:
                    message = await receive.receive()
                except anyio.EndOfStream:
                    return
            except anyio.EndOfStream:
                return
            registration.in_flight = message
            await self._handle(registration, message)
            registration.in_flight = None

    async def _report_failure(self, message: QueueMessage, exc: BaseException) -> None:
        if self.on_handler_error is not None:
            try:
                await self.on_handler_error(message, exc)
            except Exception:
                logger.exception("error hook failed for message %s", message.id_)

    async def _handle(self, registration: _Registration, message: QueueMessage) -> None:
        stats = message.stats.__dict__  # see `publish`
        stats["process_start_time"] = time.time()
        try:
            await registration.consumer.handler(message)
            registration.delivered += 1
        except BaseException as exc:
            # A handler may be user code (a custom service's process_message): whatever it
            # raises, short of our own cancellation, fails that message only (gateway.contain).
            if is_our_cancellation(exc):
                raise
            registration.failed += 1
            logger.exception(
                "consumer %s failed on message %s (%s)",
                registration.consumer.id_,
                message.id_,
                message.action,
            )
            await self._report_failure(message, exc)
        finally:
            stats["process_end_time"] = time.time()


def _loop_name(registration: _Registration) -> str:
    return f"bus-consumer:{registration.consumer.message_type}:{registration.consumer.id_}"
