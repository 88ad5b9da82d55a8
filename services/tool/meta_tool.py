"""Tools that live in other services, called across the bus.

`MetaServiceTool` stands in an agent for one tool of a ToolService and `ServiceAsTool` for a whole
service (agent, human, workflow). Both publish `NEW_TOOL_CALL` and wait for the matching
`COMPLETED_TOOL_CALL` on a reply inbox shared by every caller on the same bus: replies are pushed
to an `anyio.Event` per call, nothing polls. A timeout, an unknown service or a full bus become an
error `ToolOutput`, so an agent sees a readable failure instead of hanging or crashing.

The call travels as a `ToolCall` object (`QueueMessage.carrying`), serialized only by a transport
that leaves the process. A ToolService in the same process may then run the call within the
publish itself and answer before it returns (see `services.tool.service`); so the timeout bounds
the publish and the wait together, and a reply already there is taken without waiting.
"""

from __future__ import annotations

import json
import logging
import math
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio
import anyio.from_thread
from llama_index.core.base.llms.types import TextBlock
from llama_index.core.tools import AsyncBaseTool, ToolMetadata, ToolOutput
from pydantic import BaseModel, Field

from gateway.bus import DECLINED, BusError, Consumer
from gateway.bus.memory import MessageBus
from gateway.messages import (
    ActionTypes,
    QueueMessage,
    TaskDefinition,
    ToolCall,
    ToolCallBundle,
    ToolCallResult,
    new_id,
    new_message_id,
    trusted,
)
from gateway.wakeups import Wakeups, asyncio_cancel_scope, asyncio_loop

if TYPE_CHECKING:
    from services.base import BaseService
    from services.tool.service import ToolService

logger = logging.getLogger("services.tool.meta_tool")

DEFAULT_TOOL_TIMEOUT = 60.0


class Reply(NamedTuple):
    """What a COMPLETED_TOOL_CALL says: the output text and whether it is an error. A tool
    service that runs a call within its caller's publish hands one back on the message."""

    result: str
    is_error: bool


class _Pending:
    """One call waiting for its reply; the Event is made only if the reply is not there yet.
    Its deadline is an entry in the inbox's shared `Wakeups`, whose timer calls `set`."""

    __slots__ = ("done", "reply", "scope")

    def __init__(self) -> None:
        self.done: anyio.Event | None = None
        self.reply: Reply | None = None
        self.scope: anyio.CancelScope | None = None  # while in flight

    def set(self) -> None:
        """The deadline passed: cut the call short, unless its reply is already here."""
        if self.reply is None and self.scope is not None:
            self.scope.cancel()


def read_reply(data: dict[str, Any]) -> Reply:
    """A ToolCallResult's fields, checked by hand on the hot path, validated otherwise."""
    result, is_error = data.get("result"), data.get("is_error", False)
    if isinstance(result, str) and isinstance(is_error, bool):
        return Reply(result, is_error)
    try:
        parsed = ToolCallResult.model_validate(data)
    except ValueError as exc:
        return Reply(f"Error: malformed tool call result: {exc}", True)
    return Reply(parsed.result, parsed.is_error)


class ReplyInbox:
    """One bus consumer that receives every COMPLETED_TOOL_CALL for the callers of a bus."""

    _by_bus: weakref.WeakKeyDictionary[MessageBus, ReplyInbox] = weakref.WeakKeyDictionary()

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus
        self.id_ = f"tool-replies-{new_id()}"
        self._pending: dict[str, _Pending] = {}
        self._deadlines = Wakeups()
        bus.register_consumer(
            Consumer(message_type=self.id_, handler=self._on_reply, id_=self.id_, inline=True)
        )

    @classmethod
    def for_bus(cls, bus: MessageBus) -> ReplyInbox:
        """The bus's inbox, registered on first use (one consumer, however many tools)."""
        inbox = cls._by_bus.get(bus)
        if inbox is None:
            inbox = cls._by_bus[bus] = cls(bus)
        return inbox

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    async def _on_reply(self, message: QueueMessage) -> None:
        if message.action != ActionTypes.COMPLETED_TOOL_CALL:
            logger.warning("reply inbox %s ignored a %s message", self.id_, message.action)
            return
        result = message.carried(ToolCallResult)  # in process: the answering service's object
        call_id = result.id_ if result is not None else message.data.get("id_")
        pending = self._pending.get(call_id)  # type: ignore[arg-type]
        if pending is None:
            logger.info("late or unknown tool call result %s dropped", call_id)
            return
        if result is not None:
            pending.reply = Reply(result.result, result.is_error)
        else:
            pending.reply = read_reply(message.data)
        if pending.done is not None:
            pending.done.set()

    async def ask(
        self,
        service_name: str,
        tool_name: str,
        call_id: str,
        body: BaseModel,
        raw_input: dict[str, Any],
        timeout: float | None,
    ) -> ToolOutput:
        """Publish NEW_TOOL_CALL (`body`) to `service_name` and answer the reply to `call_id`
        as a ToolOutput; no reply (timeout, no such service, a full bus) is an error output."""
        if call_id in self._pending:
            raise ValueError(f"tool call {call_id!r} is already in flight")
        pending = self._pending[call_id] = _Pending()
        entry = None  # the deadline's, in self._deadlines
        bus = self.bus
        try:
            # The call is inside the timeout: a local tool service may run it right there and
            # answer before it returns. The deadline is an entry in one shared loop timer's
            # heap (gateway.wakeups), not a timer per call: a scope's own deadline costs a
            # timer armed and cancelled per call, more than the rest of the scope. (asyncio
            # only; on another backend the scope keeps it.)
            loop = asyncio_loop()
            scope = anyio.CancelScope() if loop is None else asyncio_cancel_scope()
            with scope:
                if timeout is not None:
                    if loop is None:  # not on asyncio
                        scope.deadline = anyio.current_time() + timeout
                    else:
                        pending.scope = scope
                        entry = self._deadlines.add(loop, loop.time() + timeout, pending)
                # A tool service in this process takes the call as is (no message); anyone
                # else gets a message, and may hand the answer back on it (see Reply).
                answer = await bus.call_direct(service_name, body)
                if answer is DECLINED:
                    answer = await self._publish(bus, service_name, body)
                if answer is not None:
                    pending.reply = answer
                elif pending.reply is None:
                    pending.done = anyio.Event()
                    await pending.done.wait()
        except BusError as exc:
            text = f"Error: cannot reach {service_name!r}: {exc}"
            return _error_output(tool_name, raw_input, text)
        finally:
            del self._pending[call_id]
            pending.scope = None
            if entry is not None:
                self._deadlines.withdraw(entry)
        reply = pending.reply
        # Cut short, the reply there (if any) is the call's own `cancelled`: a timeout.
        if scope.cancelled_caught or reply is None:
            text = (
                f"Error: tool {tool_name!r} of service {service_name!r} timed out after {timeout}s"
            )
            return _error_output(tool_name, raw_input, text)
        return text_output(tool_name, raw_input, reply.result, reply.is_error)

    async def _publish(self, bus: MessageBus, service_name: str, body: BaseModel) -> Any:
        """NEW_TOOL_CALL as a message; the answer if the receiver handed one back on it."""
        message = QueueMessage.carrying(
            body,
            answer_in_delivery=True,
            publisher_id=self.id_,
            type=service_name,
            action=ActionTypes.NEW_TOOL_CALL,
        )
        if bus.tracing is not None:  # here, whatever transport carries it
            message.trace = bus.tracing.carrier()
        await bus.publish(message)
        return message.answered()


def checked_timeout(timeout: float | None) -> float | None:
    """A stand-in's timeout, refused where it is set if it is NaN: it would never run out, and
    its entry in the inbox's shared timer would hold up every other call's deadline."""
    if timeout is not None and math.isnan(timeout):
        raise ValueError("a tool call timeout cannot be NaN")
    return timeout


def _error_output(tool_name: str, raw_input: dict[str, Any], text: str) -> ToolOutput:
    return text_output(tool_name, raw_input, text, True)


_OUTPUT_FIELDS = frozenset({"blocks", "tool_name", "raw_input", "raw_output", "is_error"})


def text_output(tool_name: str, raw_input: dict[str, Any], text: str, is_error: bool) -> ToolOutput:
    """`ToolOutput(content=text, raw_output=text, ...)` without validating it again.

    Every value is ours (the reply's text and flag, the caller's own arguments), and the
    constructor's validation of them was the largest single cost left on a tool call's way
    back. Built as pydantic's `model_construct` would, in fewer steps, for the llama-index-core
    pinned in pyproject (0.14); tests/test_meta_tool.py checks it against the constructor.
    """
    output = ToolOutput.__new__(ToolOutput)
    values = {
        # As the constructor: "" -> no block.
        "blocks": [trusted(TextBlock, {"block_type": "text", "text": text}, {"text"})]
        if text
        else [],
        "tool_name": tool_name,
        "raw_input": raw_input,
        "raw_output": text,
        "is_error": is_error,
    }
    object.__setattr__(output, "__dict__", values)
    object.__setattr__(output, "__pydantic_fields_set__", set(_OUTPUT_FIELDS))
    object.__setattr__(output, "__pydantic_extra__", None)
    object.__setattr__(output, "__pydantic_private__", {"_exception": None})
    return output


class _Unspanned:
    """`call`/`acall` for the bus tools, defined outside any AsyncBaseTool subclass body.

    llama-index's instrumentation mixin wraps `acall` of every tool subclass in a span that
    costs ~40 µs per call (an `inspect.signature` bind). The real tool call is spanned where it
    runs, in the tool service, so the stand-in skips its own: subclasses say what to send
    (`_request`) and this sends it, in a span of ours when tracing is on.
    """

    service_name: str
    timeout: float | None
    _inbox: ReplyInbox

    def _request(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[str, str, BaseModel, dict[str, Any]]:
        """(tool name, call id, the NEW_TOOL_CALL's body, the ToolOutput's raw_input)."""
        raise NotImplementedError

    async def acall(self, *args: Any, **kwargs: Any) -> ToolOutput:
        name, call_id, body, raw_input = self._request(args, kwargs)
        inbox = self._inbox
        tracing = inbox.bus.tracing
        if tracing is None:
            return await inbox.ask(self.service_name, name, call_id, body, raw_input, self.timeout)
        with tracing.tool_call(name, self.service_name) as span:  # the bus message carries it
            output = await inbox.ask(
                self.service_name, name, call_id, body, raw_input, self.timeout
            )
            if output.is_error:
                tracing.mark_error(span, str(output.content))
            return output

    def call(self, *args: Any, **kwargs: Any) -> ToolOutput:
        """Blocking form, for code running in a worker thread of the gateway's event loop."""
        return anyio.from_thread.run(lambda: self.acall(*args, **kwargs))


class MetaServiceTool(_Unspanned, AsyncBaseTool):
    """A tool of a ToolService, callable from anywhere on the same bus."""

    def __init__(
        self,
        tool_metadata: ToolMetadata,
        service_name: str,
        bus: MessageBus,
        timeout: float | None = DEFAULT_TOOL_TIMEOUT,
    ) -> None:
        self._metadata = tool_metadata
        self.service_name = service_name
        self.timeout = checked_timeout(timeout)
        self._inbox = ReplyInbox.for_bus(bus)

    @classmethod
    def from_tool_service(
        cls,
        service: ToolService | str,
        bus: MessageBus,
        *,
        services: Mapping[str, BaseService] | None = None,
        timeout: float | None = DEFAULT_TOOL_TIMEOUT,
    ) -> list[MetaServiceTool]:
        """One MetaServiceTool per tool of `service` (an object, or a name in `services`)."""
        from services.tool.service import ToolService

        if isinstance(service, str):
            if services is None or service not in services:
                raise LookupError(f"no service named {service!r}")
            service = services[service]  # type: ignore[assignment]
        if not isinstance(service, ToolService):
            raise TypeError(f"{getattr(service, 'service_name', service)!r} is not a tool service")
        return [
            cls(tool.metadata, service.service_name, bus, timeout=timeout) for tool in service.tools
        ]

    @property
    def metadata(self) -> ToolMetadata:
        return self._metadata

    def _request(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[str, str, BaseModel, dict[str, Any]]:
        name = self._metadata.get_name()
        # Call ids only need to be unique: a message id (random per process, then a counter).
        # Built without validating again (gateway.messages.trusted): every value is of its
        # field's type, the arguments as the caller gave them (a receiver checks those).
        bundle = {"tool_name": name, "tool_args": list(args), "tool_kwargs": dict(kwargs)}
        call = trusted(
            ToolCall,
            {
                "id_": new_message_id(),
                "tool_call_bundle": trusted(ToolCallBundle, bundle),
                "source_id": self._inbox.id_,
            },
        )
        return name, call.id_, call, {"args": args, "kwargs": kwargs}


class ServiceInput(BaseModel):
    """What a service-as-tool takes: the task text."""

    input: str = Field(description="The request for the service, in plain text.")


class ServiceAsTool(_Unspanned, AsyncBaseTool):
    """A whole service (agent, human, workflow) as one tool; its task's result is the output."""

    def __init__(
        self,
        service_name: str,
        bus: MessageBus,
        *,
        tool_name: str | None = None,
        description: str = "",
        timeout: float | None = DEFAULT_TOOL_TIMEOUT,
    ) -> None:
        self.service_name = service_name
        self.timeout = checked_timeout(timeout)
        self._metadata = ToolMetadata(
            name=tool_name or f"{service_name}-as-tool",
            description=description or f"Ask the {service_name} service; give the request text.",
            fn_schema=ServiceInput,
        )
        self._inbox = ReplyInbox.for_bus(bus)

    @classmethod
    def from_service(
        cls, service: BaseService, bus: MessageBus, *, timeout: float | None = DEFAULT_TOOL_TIMEOUT
    ) -> ServiceAsTool:
        return cls(
            service.service_name,
            bus,
            tool_name=service.tool_name,
            description=service.description,
            timeout=timeout,
        )

    @property
    def metadata(self) -> ToolMetadata:
        return self._metadata

    def _request(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[str, str, BaseModel, dict[str, Any]]:
        text = kwargs.pop("input", None)
        if text is None and args:
            text, args = args[0], args[1:]
        if args or kwargs:  # an LLM that ignored the schema: keep everything it sent
            extra = json.dumps({"args": list(args), "kwargs": kwargs}, default=str)
            text = f"{text or ''} {extra}".strip()
        task = TaskDefinition(input=str(text or ""))
        return self._metadata.get_name(), task.task_id, task, {"input": task.input}
