"""User code that misbehaves on purpose (`tests.fixtures_misbehaving:<name>` sources).

Every entry point raises what its input names (`kind`), from where it names (`where`): the
step itself, a worker thread, or a task the user code created. `RAISES` maps each kind to the
exception and `EXPECTED` to the error text the task must end with. Kind "none" behaves.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import Callable, Sequence
from typing import Any

from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.base.llms.types import ChatMessage, MessageRole, ToolCallBlock
from llama_index.core.llms.mock import MockFunctionCallingLLM
from llama_index.core.tools import FunctionTool
from starlette.requests import Request
from starlette.routing import BaseRoute
from workflows import Workflow, step
from workflows.events import StartEvent, StopEvent

from gateway.messages import ActionTypes, NewTask, QueueMessage, TaskResult
from services.base import BaseService


class Rogue(BaseException):
    """A BaseException subclass of the user's own."""


RAISES: dict[str, Callable[[], BaseException]] = {
    "exit": lambda: SystemExit(3),
    "interrupt": lambda: KeyboardInterrupt("stop"),
    "generator_exit": lambda: GeneratorExit("gone"),
    "rogue": lambda: Rogue("rogue"),
    "cancelled": lambda: asyncio.CancelledError("mine"),
    "error": lambda: RuntimeError("plain"),
}
EXPECTED = {
    "exit": "SystemExit: 3",
    "interrupt": "KeyboardInterrupt: stop",
    "generator_exit": "GeneratorExit: gone",
    "rogue": "Rogue: rogue",
    "cancelled": "CancelledError: mine",
    "error": "RuntimeError: plain",
}


def misbehave(kind: str = "none") -> str:
    """Raise what `kind` names (sys.exit for "exit", as a careless author would)."""
    if kind == "exit":
        sys.exit(3)
    if kind in RAISES:
        raise RAISES[kind]()
    return "fine"


async def amisbehave(kind: str = "none") -> str:
    """The async twin of `misbehave`."""
    await asyncio.sleep(0)
    return misbehave(kind)


async def misbehave_from(kind: str, where: str) -> str:
    if where == "thread":
        return await asyncio.to_thread(misbehave, kind)
    if where == "task":  # a task the user code creates itself
        return await asyncio.create_task(amisbehave(kind))
    return misbehave(kind)


# -- workflows ------------------------------------------------------------------------------------
class MisbehavingWorkflow(Workflow):
    """Input `{"kind": ..., "where": "step" | "thread" | "task"}`."""

    @step
    async def act(self, ev: StartEvent) -> StopEvent:
        kind, where = str(ev.get("kind", "none")), str(ev.get("where", "step"))
        return StopEvent(result=await misbehave_from(kind, where))


class SyncMisbehavingWorkflow(Workflow):
    """A synchronous step (the workflow library runs it off the loop)."""

    @step
    def act(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result=misbehave(str(ev.get("kind", "none"))))


def workflow() -> MisbehavingWorkflow:
    return MisbehavingWorkflow(timeout=10)


def sync_workflow() -> SyncMisbehavingWorkflow:
    return SyncMisbehavingWorkflow(timeout=10)


# -- components -----------------------------------------------------------------------------------
async def async_component(kind: str = "none", where: str = "step") -> str:
    return await misbehave_from(kind, where)


def sync_component(kind: str = "none") -> str:
    return misbehave(kind)


# -- tools ----------------------------------------------------------------------------------------
def tools() -> list[Any]:
    return [
        FunctionTool.from_defaults(fn=misbehave, name="sync_misbehave"),
        FunctionTool.from_defaults(async_fn=amisbehave, name="async_misbehave"),
    ]


# -- human ----------------------------------------------------------------------------------------
def fn_input(prompt: str, task_id: str) -> str:
    """The prompt is the task input: the kind to raise (sync: runs in a worker thread)."""
    return misbehave(prompt.strip())


async def afn_input(prompt: str, task_id: str) -> str:
    return await amisbehave(prompt.strip())


# -- agents ---------------------------------------------------------------------------------------
def _call_tool(messages: Sequence[ChatMessage], **kwargs: Any) -> ChatMessage:
    """The user message is `<tool> <kind>`: call that tool, then repeat what it answered."""
    last = max(i for i, m in enumerate(messages) if m.role == MessageRole.USER)
    replies = [m.content for m in messages[last + 1 :] if m.role == MessageRole.TOOL]
    if replies:
        return ChatMessage(role="assistant", content=f"tool said: {replies[-1]}")
    tool, _, kind = str(messages[last].content or "").partition(" ")
    call = ToolCallBlock(tool_call_id="call-1", tool_name=tool, tool_kwargs={"kind": kind})
    return ChatMessage(role="assistant", blocks=[call])


def tool_agent() -> FunctionAgent:
    """An agent that calls a (misbehaving) tool of a tool service."""
    return FunctionAgent(
        name="caller", tools=[], llm=MockFunctionCallingLLM(response_generator=_call_tool)
    )


def _model_misbehaves(messages: Sequence[ChatMessage], **kwargs: Any) -> ChatMessage:
    misbehave(str(messages[-1].content or "").strip())
    return ChatMessage(role="assistant", content="fine")


def model_agent() -> FunctionAgent:
    """An agent whose model itself raises what the question names."""
    return FunctionAgent(
        name="fragile", tools=[], llm=MockFunctionCallingLLM(response_generator=_model_misbehaves)
    )


# -- a custom service -----------------------------------------------------------------------------
class MisbehavingService(BaseService):
    """Its `process_message` raises what the task input names; `POST /break` kills a loop."""

    def routes(self) -> list[BaseRoute]:
        from gateway.web.routing import api_route

        return [*self.common_routes(), api_route("/break", self._break, methods=["POST"])]

    async def process_message(self, message: QueueMessage) -> None:
        """Input `<kind>` raises right here; `<kind>@work` raises in the spawned work."""
        if message.action != ActionTypes.NEW_TASK:
            raise ValueError(f"{self.service_name} handles only NEW_TASK")
        task = NewTask.model_validate(message.data).task
        kind, _, where = task.input.partition("@")
        if where != "work":
            misbehave(kind)

        async def work() -> TaskResult:
            return TaskResult(task_id=task.task_id, result=await amisbehave(kind))

        self.spawn(task, work)

    async def _break(self, request: Request) -> dict[str, str]:
        """Simulate a core background loop of the gateway dying of a bug."""

        async def crash() -> None:
            raise RuntimeError("a background loop died")

        self.service_host.task_group.start_soon(crash)
        return {"broken": "yes"}


async def self_cancelling_component(kind: str = "none") -> str:
    """`swallow`: cancel its own task and swallow the CancelledError (the task's cancel count
    stays raised); anything else as `amisbehave`."""
    if kind == "swallow":
        asyncio.current_task().cancel()  # type: ignore[union-attr]
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            return "swallowed"
    return await amisbehave(kind)


REQUEST_USER: contextvars.ContextVar[str] = contextvars.ContextVar("request_user", default="nobody")


async def who_am_i(user: str = "anon") -> str:
    """Set a context variable without resetting it (as request-scoped logging libraries do) and
    answer what it held first: another task's value there would be a leak."""
    before = REQUEST_USER.get()
    REQUEST_USER.set(user)
    await asyncio.sleep(0)
    return before


async def forgetful_watchdog(delay: float = 0.2) -> str:
    """Cancel "its own" task after `delay` unless done first; it is done at once and forgets to
    disarm the timer (harmless when every run had a task of its own)."""
    me = asyncio.current_task()
    asyncio.get_running_loop().call_later(delay, me.cancel)  # type: ignore[union-attr]
    await asyncio.sleep(0)
    return "done"


async def self_cancel(kind: str = "propagate") -> str:
    """Cancel the task it runs in: `propagate` lets the CancelledError out, `noawait` returns
    before it is delivered."""
    asyncio.current_task().cancel()  # type: ignore[union-attr]
    if kind == "noawait":
        return "returned"
    await asyncio.sleep(0)
    return "unreachable"


async def tool_who_am_i(user: str) -> str:
    """As `who_am_i`, as a tool."""
    return await who_am_i(user)


async def tool_self_cancel() -> str:
    """Cancel the task it runs in and let the CancelledError out."""
    return await self_cancel("propagate")


def worker_tools() -> list[Any]:
    return [
        FunctionTool.from_defaults(async_fn=tool_who_am_i, name="who_am_i"),
        FunctionTool.from_defaults(async_fn=tool_self_cancel, name="self_cancel"),
    ]
