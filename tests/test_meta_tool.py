"""MetaServiceTool and ServiceAsTool: tool calls across the bus, event-driven, with timeouts."""

from __future__ import annotations

import anyio
import pytest

from services.tool.meta_tool import MetaServiceTool, Reply, ReplyInbox, ServiceAsTool, read_reply
from tests import fixtures_agents
from tests.conftest import gateway_client

pytestmark = pytest.mark.anyio

CONFIG = {
    "services": {
        "calc": {"type": "tool", "source": "examples.tools:tools"},
        "gate": {"type": "tool", "source": "tests.fixtures_agents:build_gate_tools"},
        "assistant": {"type": "agent", "source": "examples.agent:build_agent", "tools": ["calc"]},
        "broken": {"type": "agent", "source": "tests.fixtures_agents:build_failing_agent"},
    }
}


async def test_round_trip_over_the_bus_keeps_metadata_and_results() -> None:
    apps: list = []
    async with gateway_client(CONFIG, app_out=apps):
        runtime = apps[0].state.runtime
        calc = runtime.services["calc"]
        tools = MetaServiceTool.from_tool_service("calc", runtime.bus, services=runtime.services)
        by_name = {t.metadata.name: t for t in tools}
        assert set(by_name) == {"add", "subtract", "multiply", "divide"}
        assert by_name["add"].metadata.fn_schema is calc.tools[0].metadata.fn_schema
        ok = await by_name["subtract"].acall(a=10, b=4)
        failed = await by_name["divide"].acall(a=1, b=0)
        assert ReplyInbox.for_bus(runtime.bus).outstanding == 0
    assert (ok.content, ok.is_error, ok.tool_name) == ("6", False, "subtract")
    assert failed.is_error and "ZeroDivisionError" in failed.content


async def test_concurrent_calls_get_their_own_replies() -> None:
    apps: list = []
    async with gateway_client(CONFIG, app_out=apps):
        runtime = apps[0].state.runtime
        add = MetaServiceTool.from_tool_service("calc", runtime.bus, services=runtime.services)[0]
        answers: dict[int, str] = {}

        async def one(i: int) -> None:
            answers[i] = (await add.acall(a=i, b=1000)).content

        async with anyio.create_task_group() as tg:
            for i in range(25):
                tg.start_soon(one, i)
    assert answers == {i: str(i + 1000) for i in range(25)}


async def test_timeout_gives_an_error_output_and_forgets_the_call() -> None:
    apps: list = []
    async with gateway_client(CONFIG, app_out=apps):
        runtime = apps[0].state.runtime
        tools = MetaServiceTool.from_tool_service(
            "gate", runtime.bus, services=runtime.services, timeout=0.2
        )
        hold = next(t for t in tools if t.metadata.name == "hold")
        with anyio.fail_after(5):
            output = await hold.acall(label="never")
        assert ReplyInbox.for_bus(runtime.bus).outstanding == 0
        fixtures_agents.GATE.opened.set()  # let the abandoned call finish; its reply is dropped
    assert output.is_error
    assert "timed out after 0.2s" in output.content and "'gate'" in output.content


async def test_unreachable_service_is_an_error_output() -> None:
    apps: list = []
    async with gateway_client(CONFIG, app_out=apps):
        runtime = apps[0].state.runtime
        calc_add = runtime.services["calc"].tools[0]
        ghost = MetaServiceTool(calc_add.metadata, "ghost", runtime.bus, timeout=1)
        output = await ghost.acall(a=1, b=2)
    assert output.is_error and "cannot reach 'ghost'" in output.content


async def test_service_as_tool_asks_an_agent_service() -> None:
    apps: list = []
    async with gateway_client(CONFIG, app_out=apps) as client:
        runtime = apps[0].state.runtime
        agent_tool = ServiceAsTool.from_service(runtime.services["assistant"], runtime.bus)
        broken_tool = ServiceAsTool.from_service(runtime.services["broken"], runtime.bus)
        answer = await agent_tool.acall(input="What is 6*7?")
        failure = await broken_tool.acall("hello")
        tasks = (await client.get("/control_plane/tasks")).json()
    assert agent_tool.metadata.name == "assistant-as-tool"
    assert agent_tool.metadata.get_parameters_dict()["required"] == ["input"]
    assert (answer.content, answer.is_error) == ("The answer is 42.", False)
    assert failure.is_error and "the model is down" in failure.content
    assert tasks["total"] == 0  # tool calls answer their caller, not the control plane


def test_replies_are_read_by_hand_and_malformed_ones_become_errors() -> None:
    assert read_reply({"id_": "1", "result": "7", "is_error": False}) == Reply("7", False)
    broken = read_reply({"id_": "1", "result": 7})
    assert broken.is_error and "malformed tool call result" in broken.result
