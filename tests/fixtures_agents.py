"""Test-only tools and agents (sources like `tests.fixtures_agents:build_gate_tools`)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import anyio
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.base.llms.types import ChatMessage, MessageRole, ToolCallBlock
from llama_index.core.llms.mock import MockFunctionCallingLLM
from llama_index.core.tools import BaseTool, FunctionTool, ToolMetadata, ToolOutput
from pydantic import BaseModel

from gateway.bus import Consumer
from gateway.bus.memory import MessageBus
from gateway.messages import ActionTypes, QueueMessage, ToolCallResult


class Gate:
    """Shared state of the gate tools, so a test can see how many calls are inside at once."""

    def __init__(self) -> None:
        self.active = 0
        self.peak = 0
        self.arrived = 0
        self._open: anyio.Event | None = None
        self._met: anyio.Event | None = None

    @property
    def opened(self) -> anyio.Event:
        if self._open is None:
            self._open = anyio.Event()
        return self._open

    @property
    def met(self) -> anyio.Event:
        if self._met is None:
            self._met = anyio.Event()
        return self._met

    async def hold(self, label: str) -> str:
        """Wait inside the tool until the test opens the gate."""
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await self.opened.wait()
        finally:
            self.active -= 1
        return label

    async def meet(self, n: int) -> str:
        """Return only once `n` calls are inside at the same time (fails after 5 s)."""
        self.arrived += 1
        if self.arrived >= n:
            self.met.set()
        with anyio.fail_after(5):
            await self.met.wait()
        return "met"


GATE = Gate()


def boom(reason: str = "boom") -> str:
    """Always raises."""
    raise RuntimeError(reason)


class NoArguments(BaseModel):
    """A tool that takes nothing."""


class ThreadNameTool(BaseTool):
    """A synchronous, non-function BaseTool: answers the name of the thread it ran in."""

    @property
    def metadata(self) -> ToolMetadata:
        return ToolMetadata(
            name="thread_name", description="Name of the running thread.", fn_schema=NoArguments
        )

    def __call__(self, *args: Any, **kwargs: Any) -> ToolOutput:
        name = threading.current_thread().name
        return ToolOutput(content=name, tool_name="thread_name", raw_input={}, raw_output=name)


def build_gate_tools() -> list[Any]:
    """A fresh gate (in `GATE`) and its tools, plus a raising and a synchronous tool."""
    global GATE
    GATE = Gate()
    return [
        FunctionTool.from_defaults(async_fn=GATE.hold, name="hold"),
        FunctionTool.from_defaults(async_fn=GATE.meet, name="meet"),
        FunctionTool.from_defaults(fn=boom),
        ThreadNameTool(),
    ]


class BusInbox:
    """A bus consumer for tests: every message it receives, in order, awaitable."""

    def __init__(self, bus: MessageBus, name: str = "test-inbox") -> None:
        self.name = name
        self._send, self._receive = anyio.create_memory_object_stream[QueueMessage](256)
        bus.register_consumer(Consumer(message_type=name, handler=self._send.send, id_=name))

    async def next(self, timeout: float = 5.0) -> QueueMessage:
        with anyio.fail_after(timeout):
            return await self._receive.receive()

    async def results(self, count: int, timeout: float = 5.0) -> dict[str, ToolCallResult]:
        """The next `count` COMPLETED_TOOL_CALL results, by tool call id."""
        found: dict[str, ToolCallResult] = {}
        while len(found) < count:
            message = await self.next(timeout)
            assert message.action == ActionTypes.COMPLETED_TOOL_CALL
            result = ToolCallResult.model_validate(message.data)
            found[result.id_] = result
        return found


# -- agents ---------------------------------------------------------------------------------------
def _down(messages: Sequence[ChatMessage], **kwargs: Any) -> ChatMessage:
    raise RuntimeError("the model is down")


def build_failing_agent() -> FunctionAgent:
    """An agent whose LLM always raises."""
    return FunctionAgent(
        name="failing", tools=[], llm=MockFunctionCallingLLM(response_generator=_down)
    )


def _delegate(messages: Sequence[ChatMessage], **kwargs: Any) -> ChatMessage:
    """Pass the question to the first service-as-tool, then report its answer."""
    last = max(i for i, m in enumerate(messages) if m.role == MessageRole.USER)
    replies = [m.content for m in messages[last + 1 :] if m.role == MessageRole.TOOL]
    if replies:
        return ChatMessage(role="assistant", content=f"Delegate says: {replies[-1]}")
    tools = [t.metadata.name for t in kwargs.get("tools") or []]
    target = next((t for t in tools if t and t.endswith("-as-tool")), None)
    if target is None:
        return ChatMessage(role="assistant", content="nobody to ask")
    call = ToolCallBlock(
        tool_call_id="delegate-1",
        tool_name=target,
        tool_kwargs={"input": messages[last].content or ""},
    )
    return ChatMessage(role="assistant", blocks=[call])


def build_delegating_agent() -> FunctionAgent:
    """An agent that asks another service (used as a tool) and repeats its answer."""
    return FunctionAgent(
        name="front", tools=[], llm=MockFunctionCallingLLM(response_generator=_delegate)
    )


def _hold_then_count(messages: Sequence[ChatMessage], **kwargs: Any) -> ChatMessage:
    """Call `hold` (waits for `GATE`), then answer how many user turns the memory holds."""
    last = max(i for i, m in enumerate(messages) if m.role == MessageRole.USER)
    if any(m.role == MessageRole.TOOL for m in messages[last + 1 :]):
        turns = sum(1 for m in messages if m.role == MessageRole.USER)
        return ChatMessage(role="assistant", content=f"user turns seen: {turns}")
    call = ToolCallBlock(
        tool_call_id="hold-1", tool_name="hold", tool_kwargs={"label": messages[last].content}
    )
    return ChatMessage(role="assistant", blocks=[call])


def build_holding_agent() -> FunctionAgent:
    """An agent whose run waits inside its `hold` tool until `GATE.opened` is set (a fresh
    GATE per build), then reports how many user turns its memory had."""
    global GATE
    GATE = Gate()
    return FunctionAgent(
        name="holding",
        tools=[FunctionTool.from_defaults(async_fn=GATE.hold, name="hold")],
        llm=MockFunctionCallingLLM(response_generator=_hold_then_count),
    )
