"""Tool calls from this process run within their caller's publish, and keep every guarantee.

A MetaServiceTool hands its ToolCall over as an object; the ToolService runs it in the caller's
own task and hands the answer back on the message. These tests pin what must not change with
that: the caller's timeout and cancellation reach the tool, `max_concurrent_calls` still bounds
the calls, nothing a tool raises escapes into the caller, every call is answered exactly once,
and anything that leaves the process (JSON) still goes the bus way with a reply message.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from llama_index.core.tools import BaseTool, FunctionTool, ToolMetadata, ToolOutput

from gateway.bus import Consumer
from gateway.contain import _IN_USER_CODE
from gateway.messages import ActionTypes, QueueMessage, ToolCallResult
from gateway.runtime import Runtime
from services.tool.meta_tool import MetaServiceTool, ReplyInbox, ServiceAsTool, text_output
from services.tool.service import ToolService
from tests.fixtures_agents import NoArguments

pytestmark = pytest.mark.anyio


class Probe:
    """What the test tools saw: the task they ran in, how many were inside, what ended them."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task | None] = []
        self.marked: list[bool] = []  # was the call marked as user code (gateway.contain)
        self.active = 0
        self.peak = 0
        self.cancelled = 0
        self.release = anyio.Event()


@asynccontextmanager
async def serving(
    probe: Probe, max_calls: int = 4, timeout: float | None = 5.0
) -> AsyncIterator[tuple[Runtime, ToolService, dict[str, MetaServiceTool]]]:
    async def where(x: int) -> int:
        """Answer `x`; note the task this ran in."""
        probe.tasks.append(asyncio.current_task())
        probe.marked.append(_IN_USER_CODE.get())
        return x

    async def hold() -> str:
        """Wait until the test releases it; count who is inside and who was cancelled."""
        probe.active += 1
        probe.peak = max(probe.peak, probe.active)
        try:
            await probe.release.wait()
        except BaseException:
            probe.cancelled += 1
            raise
        finally:
            probe.active -= 1
        return "released"

    async def escape(kind: str) -> str:
        """Raise what user code must never get past the gateway."""
        if kind == "exit":
            raise SystemExit(3)
        if kind == "interrupt":
            raise KeyboardInterrupt
        raise asyncio.CancelledError("the tool's own")

    async def twice(x: int) -> str:
        """Call `where` of its own service over the bus, from within this call."""
        inner = (await tools["where"].acall(x=x)).content
        return f"{inner}+{inner}"

    service = ToolService(
        service_name="probe",
        max_concurrent_calls=max_calls,
        tools=[
            FunctionTool.from_defaults(async_fn=where),
            FunctionTool.from_defaults(async_fn=hold),
            FunctionTool.from_defaults(async_fn=escape),
            FunctionTool.from_defaults(async_fn=twice),
            SlowThreadTool(),
        ],
    )
    runtime = Runtime.for_services([service], secret=b"test")
    async with runtime.running():
        tools = {
            t.metadata.name: t
            for t in MetaServiceTool.from_tool_service(service, runtime.bus, timeout=timeout)
        }
        yield runtime, service, tools


class SlowThreadTool(BaseTool):
    """A synchronous BaseTool (run in a thread anyio cannot abandon) that takes 1.5 s."""

    @property
    def metadata(self) -> ToolMetadata:
        return ToolMetadata(name="slow", description="Sleep in a thread.", fn_schema=NoArguments)

    def __call__(self, *args: Any, **kwargs: Any) -> ToolOutput:
        time.sleep(1.5)
        return ToolOutput(content="slept", tool_name="slow", raw_input={}, raw_output="slept")


def inbox_delivered(runtime: Runtime) -> int:
    inbox = ReplyInbox.for_bus(runtime.bus)
    return {s["consumer_id"]: s for s in runtime.bus.stats()}[inbox.id_]["delivered"]


async def test_runs_in_the_callers_task_and_answers_on_the_message() -> None:
    probe = Probe()
    async with serving(probe) as (runtime, service, tools):
        before = inbox_delivered(runtime)
        output = await tools["where"].acall(x=7)
        assert probe.tasks == [asyncio.current_task()]  # no worker, no hand-off
        # tasks the tool starts are contained; the mark ends with the call, not the caller
        assert probe.marked == [True] and not _IN_USER_CODE.get()
        assert inbox_delivered(runtime) == before  # no reply message was needed
        assert ReplyInbox.for_bus(runtime.bus).outstanding == 0
        assert (await service.home())["num_outstanding_tool_calls"] == 0
    assert (output.content, output.raw_output, output.is_error) == ("7", "7", False)
    assert output.raw_input == {"args": (), "kwargs": {"x": 7}}


async def test_the_callers_timeout_cancels_the_tool_and_frees_its_slot() -> None:
    probe = Probe()
    async with serving(probe, max_calls=1, timeout=0.2) as (runtime, service, tools):
        started = time.monotonic()
        with anyio.fail_after(5):
            output = await tools["hold"].acall()
        waited = time.monotonic() - started
        assert probe.cancelled == 1 and probe.active == 0
        assert (await service.home())["num_outstanding_tool_calls"] == 0
        after = await tools["where"].acall(x=1)  # the only slot was given back
    assert output.is_error and "timed out after 0.2s" in output.content
    assert 0.15 < waited < 2
    assert after.content == "1"


async def test_calls_started_in_the_same_turn_all_get_their_deadline() -> None:
    """Every call still in flight gets its deadline, however many started together."""
    probe = Probe()
    async with serving(probe, timeout=0.2) as (runtime, service, tools):
        outputs: list[ToolOutput] = []

        async def one() -> None:
            outputs.append(await tools["hold"].acall())

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(one)
        assert probe.cancelled == 3 and ReplyInbox.for_bus(runtime.bus).outstanding == 0
    assert [o.is_error and "timed out" in o.content for o in outputs] == [True] * 3


async def test_a_short_deadline_behind_a_long_one_still_fires_and_nothing_is_left() -> None:
    """Deadlines share one timer: a later call with a shorter timeout must not wait for the
    earlier one's, and calls that end (answered or timed out) leave no deadline behind."""
    probe = Probe()
    async with serving(probe) as (runtime, service, tools):
        slow = MetaServiceTool(tools["hold"].metadata, "probe", runtime.bus, timeout=30)
        quick = MetaServiceTool(tools["hold"].metadata, "probe", runtime.bus, timeout=0.2)
        outputs: dict[str, ToolOutput] = {}
        waited: dict[str, float] = {}

        async def call(name: str, tool: MetaServiceTool) -> None:
            started = time.monotonic()
            outputs[name] = await tool.acall()
            waited[name] = time.monotonic() - started

        inbox = ReplyInbox.for_bus(runtime.bus)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call, "slow", slow)
                await anyio.sleep(0.05)  # the long deadline is armed first
                tg.start_soon(call, "quick", quick)
                await anyio.sleep(0.5)
                assert "quick" in outputs and "slow" not in outputs
                probe.release.set()
        for _ in range(50):  # answered at once, within the publish
            await tools["where"].acall(x=1)
        assert len(inbox._deadlines) == 0 and inbox.outstanding == 0
    assert outputs["quick"].is_error and "timed out after 0.2s" in outputs["quick"].content
    assert waited["quick"] < 2
    assert outputs["slow"].content == "released" and not outputs["slow"].is_error


async def test_a_nan_timeout_is_refused_and_never_holds_up_other_calls() -> None:
    """A NaN deadline in the inbox's shared timer would stop every other call on the bus from
    timing out (found by review): refused where a stand-in is made, and where a call starts."""
    probe = Probe()
    async with serving(probe) as (runtime, service, tools):
        meta = tools["hold"].metadata
        with pytest.raises(ValueError, match="NaN"):
            MetaServiceTool(meta, "probe", runtime.bus, timeout=math.nan)
        with pytest.raises(ValueError, match="NaN"):
            ServiceAsTool("probe", runtime.bus, timeout=math.nan)
        odd = MetaServiceTool(meta, "probe", runtime.bus, timeout=5)
        odd.timeout = math.nan  # set afterwards: the call itself refuses it
        quick = MetaServiceTool(meta, "probe", runtime.bus, timeout=0.2)
        with anyio.fail_after(5):
            with pytest.raises(ValueError, match="NaN"):
                await odd.acall()
            output = await quick.acall()
        inbox = ReplyInbox.for_bus(runtime.bus)
        assert inbox.outstanding == 0 and len(inbox._deadlines) == 0
    assert output.is_error and "timed out after 0.2s" in output.content


async def test_cancelling_the_caller_cancels_the_tool() -> None:
    probe = Probe()
    async with serving(probe) as (runtime, service, tools):
        with anyio.fail_after(5), anyio.move_on_after(0.2):
            await tools["hold"].acall()
            pytest.fail("the call should have been cancelled with its caller")
        assert probe.cancelled == 1
        assert (await service.home())["num_outstanding_tool_calls"] == 0
        assert ReplyInbox.for_bus(runtime.bus).outstanding == 0


async def test_max_concurrent_calls_bounds_calls_run_in_their_callers() -> None:
    probe = Probe()
    async with serving(probe, max_calls=2) as (runtime, service, tools):
        outputs: list[ToolOutput] = []

        async def one() -> None:
            outputs.append(await tools["hold"].acall())

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(one)
            await anyio.wait_all_tasks_blocked()
            assert probe.active == 2  # the other three wait for the limiter
            probe.release.set()
    assert probe.peak == 2
    assert [o.content for o in outputs] == ["released"] * 5


async def test_what_a_tool_raises_stays_in_the_call() -> None:
    probe = Probe()
    async with serving(probe) as (runtime, service, tools):
        outputs = [await tools["escape"].acall(kind=k) for k in ("exit", "interrupt", "own")]
        still = await tools["where"].acall(x=2)
    assert all(o.is_error for o in outputs)
    assert "SystemExit: 3" in outputs[0].content
    assert "KeyboardInterrupt" in outputs[1].content
    assert "CancelledError: the tool's own" in outputs[2].content
    assert still.content == "2"


async def test_a_tool_may_call_a_tool_of_its_own_service_from_the_same_task() -> None:
    probe = Probe()
    async with serving(probe, max_calls=2) as (runtime, service, tools):
        output = await tools["twice"].acall(x=4)
    assert (output.content, output.is_error) == ("4+4", False)


async def test_threaded_tools_stay_with_the_pool_so_the_timeout_holds() -> None:
    """A sync BaseTool runs in a thread anyio waits for even when cancelled: in the caller's
    task it would hold the caller past its timeout, so it goes to a worker as before."""
    probe = Probe()
    async with serving(probe, timeout=0.2) as (runtime, service, tools):
        started = time.monotonic()
        with anyio.fail_after(5):
            output = await tools["slow"].acall()
        waited = time.monotonic() - started
        assert output.is_error and "timed out after 0.2s" in output.content
        assert waited < 1.0
        await anyio.sleep(1.5)  # let the thread finish before the runtime stops


async def test_a_call_that_leaves_the_process_is_answered_over_the_bus() -> None:
    """Between two processes the call is JSON: no object to run in the delivery, no answer on
    the message. It takes the worker path and the reply comes back as a message."""
    probe = Probe()
    async with serving(probe) as (runtime, service, tools):
        bus = runtime.bus
        bus.deregister_consumer(service.publisher_id)

        async def over_the_wire(message: QueueMessage) -> None:
            arrived = QueueMessage.model_validate_json(message.model_dump_json())
            assert arrived.carried(object) is None and not arrived.wants_answer_here()
            await service.handle_message(arrived)

        bus.register_consumer(Consumer(message_type="probe", handler=over_the_wire, inline=True))
        before = inbox_delivered(runtime)
        output = await tools["where"].acall(x=9)
        assert inbox_delivered(runtime) == before + 1  # the reply was a message
        assert probe.tasks and probe.tasks[-1] is not asyncio.current_task()  # a pool worker
    assert (output.content, output.is_error) == ("9", False)


async def test_the_answer_on_a_message_never_leaves_the_process() -> None:
    call = ToolCallResult.model_validate(
        {"id_": "1", "tool_message": {"role": "tool"}, "result": "r", "is_error": False}
    )
    message = QueueMessage.carrying(call, answer_in_delivery=True, type="x")
    assert message.wants_answer_here() and message.answered() is None
    copied = message.model_copy()
    wire = QueueMessage.model_validate_json(message.model_dump_json())
    message.answer_here("answer")
    assert message.answered() == "answer"
    assert not copied.wants_answer_here() and not wire.wants_answer_here()
    assert wire.body_as(ToolCallResult) == call
    plain = QueueMessage(type="x", action=ActionTypes.NEW_TOOL_CALL)
    assert not plain.wants_answer_here() and plain.answered() is None


@pytest.mark.parametrize(("text", "is_error"), [("42", False), ("", False), ("Error: x", True)])
def test_text_output_is_the_tool_output_the_constructor_makes(text: str, is_error: bool) -> None:
    raw_input = {"args": (1,), "kwargs": {"a": [2]}}
    built = text_output("add", raw_input, text, is_error)
    expected = ToolOutput(
        content=text, tool_name="add", raw_input=raw_input, raw_output=text, is_error=is_error
    )
    assert built == expected
    assert built.model_dump() == expected.model_dump()
    assert (built.content, built.exception, str(built)) == (text, None, text)
    assert built.model_fields_set == expected.model_fields_set
    assert set(type(built).model_fields) == set(built.__dict__)  # no field of the class missed


def tool_service_delivered(runtime: Runtime, service: ToolService) -> int:
    return {s["consumer_id"]: s for s in runtime.bus.stats()}[service.publisher_id]["delivered"]


async def test_a_call_in_this_process_needs_no_message_and_still_counts(monkeypatch) -> None:
    """The in-memory bus hands a local tool service the ToolCall itself (`call_direct`): no
    envelope is built or published, and the delivery still shows in the bus's stats."""
    probe = Probe()
    async with serving(probe) as (runtime, service, tools):
        published: list[QueueMessage] = []
        real_publish = runtime.bus.publish

        async def recording(message: QueueMessage, timeout: float | None = -1.0) -> None:
            published.append(message)
            await real_publish(message, timeout)

        monkeypatch.setattr(runtime.bus, "publish", recording)
        before = tool_service_delivered(runtime, service)
        outputs = [await tools["where"].acall(x=i) for i in range(3)]
        assert published == []
        assert tool_service_delivered(runtime, service) == before + 3
        assert probe.tasks == [asyncio.current_task()] * 3
        assert (await service.home())["num_outstanding_tool_calls"] == 0
    assert [o.content for o in outputs] == ["0", "1", "2"]


async def test_a_service_with_two_consumers_gets_messages_round_robin() -> None:
    """Direct only for the one consumer of a type: with a second one, calls are messages again
    and go round robin, as `publish` routes them."""
    probe = Probe()
    async with serving(probe) as (runtime, service, tools):
        seen: list[QueueMessage] = []

        async def second(message: QueueMessage) -> None:
            seen.append(message)
            await service.handle_message(message)

        runtime.bus.register_consumer(Consumer(message_type="probe", handler=second, inline=True))
        outputs = [await tools["where"].acall(x=i) for i in range(4)]
    assert [o.content for o in outputs] == ["0", "1", "2", "3"]
    assert len(seen) == 2 and all(m.action is ActionTypes.NEW_TOOL_CALL for m in seen)


async def test_the_direct_way_in_declines_what_is_not_a_local_tool_call() -> None:
    from gateway.bus import DECLINED
    from gateway.messages import TaskDefinition

    probe = Probe()
    async with serving(probe) as (runtime, service, tools):
        assert await runtime.bus.call_direct("probe", TaskDefinition(input="x")) is DECLINED
        assert await runtime.bus.call_direct("nobody", TaskDefinition(input="x")) is DECLINED


async def test_a_direct_way_in_that_fails_is_logged_counted_and_left_unanswered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As a failed delivery of a message: the caller hears nothing and times out."""
    probe = Probe()
    async with serving(probe, timeout=0.3) as (runtime, service, tools):
        registration = runtime.bus._by_id[service.publisher_id]

        async def broken(body: Any) -> Any:
            raise RuntimeError("bug")

        registration.consumer.direct = broken
        failed = registration.failed
        with anyio.fail_after(5):
            output = await tools["where"].acall(x=1)
        assert registration.failed == failed + 1
        assert ReplyInbox.for_bus(runtime.bus).outstanding == 0
    assert output.is_error and "timed out after 0.3s" in output.content
    assert "failed on a call handed over as is" in caplog.text
