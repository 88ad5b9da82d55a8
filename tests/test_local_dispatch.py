"""The control plane hands a task to a service of its own process by call, not as a NEW_TASK
message, where the bus would have delivered that message inline to the stock handler anyway;
everything else (custom message handling, queued delivery, tracing) still gets messages."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.bus.memory import MessageBus
from gateway.messages import ActionTypes, QueueMessage
from services.kwargs import KwargsService
from services.workflow import WorkflowService
from tests.conftest import gateway_client

pytestmark = pytest.mark.anyio

CFG: dict[str, Any] = {
    "services": {"echo": {"type": "workflow", "source": "examples.echo:workflow"}}
}


@pytest.fixture
def new_tasks(monkeypatch: pytest.MonkeyPatch) -> list[QueueMessage]:
    """NEW_TASK messages published on the in-memory bus during the test."""
    seen: list[QueueMessage] = []
    publish = MessageBus.publish

    async def spy(self: MessageBus, message: QueueMessage, timeout: float | None = -1.0) -> None:
        if message.action == ActionTypes.NEW_TASK:
            seen.append(message)
        await publish(self, message, timeout)

    monkeypatch.setattr(MessageBus, "publish", spy)
    return seen


async def run(client: Any, message: str) -> dict[str, Any]:
    answer = await client.post("/services/echo/run", json={"kwargs": {"message": message}})
    assert answer.status_code == 200, answer.text
    return answer.json()


async def test_a_local_service_takes_its_tasks_without_a_bus_message(new_tasks: list) -> None:
    async with gateway_client(CFG) as client:
        done = [await run(client, f"m{n}") for n in range(3)]
        submitted = await client.post(
            "/control_plane/tasks", json={"service": "echo", "input": {"message": "queued"}}
        )
        task_id = submitted.json()["task_id"]
        ended = await client.get(f"/control_plane/tasks/{task_id}/result", params={"wait": 5})
    assert [(t["status"], t["result"]) for t in done] == [("completed", f"m{n}") for n in range(3)]
    assert ended.json()["result"] == "queued"
    assert new_tasks == []


async def test_a_service_with_its_own_message_handling_still_gets_messages(
    new_tasks: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    handled: list[str] = []
    stock = WorkflowService.process_message

    async def own(self: WorkflowService, message: QueueMessage) -> None:
        handled.append(message.action)
        await stock(self, message)

    monkeypatch.setattr(WorkflowService, "process_message", own)
    async with gateway_client(CFG) as client:
        task = await run(client, "hi")
    assert (task["status"], task["result"]) == ("completed", "hi")
    assert handled == [ActionTypes.NEW_TASK]
    assert [m.data["task"]["task_id"] for m in new_tasks] == [task["task_id"]]


async def test_queued_delivery_keeps_the_message_path(
    new_tasks: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A service delivered through a bounded buffer and a receive loop keeps its back-pressure.
    monkeypatch.setattr(KwargsService, "inline_delivery", False)
    async with gateway_client(CFG) as client:
        task = await run(client, "hi")
    assert task["status"] == "completed"
    assert len(new_tasks) == 1


class Rogue(BaseException):
    """What careless user code may raise: not an Exception, not a cancellation of ours."""


@pytest.mark.parametrize(
    ("raised", "error"),
    [
        (RuntimeError("no room at the inn"), "RuntimeError: no room at the inn"),
        # As the bus's delivery did (gateway.contain): a BaseException that is not our own
        # cancellation fails the task; it neither answers 500 nor leaves the task pending.
        (Rogue("rogue"), "Rogue: rogue"),
    ],
)
async def test_whatever_a_take_raises_fails_that_task_only(
    monkeypatch: pytest.MonkeyPatch, raised: BaseException, error: str
) -> None:
    take = KwargsService.take_task
    refused: list[str] = []

    def refuse_once(self: KwargsService, task: Any, state: dict) -> None:
        if not refused:
            refused.append(task.task_id)
            raise raised
        take(self, task, state)

    monkeypatch.setattr(KwargsService, "take_task", refuse_once)
    async with gateway_client(CFG) as client:
        failed = await run(client, "first")
        fine = await run(client, "second")
    assert (failed["task_id"], failed["status"]) == (refused[0], "failed")
    assert failed["error"] == error
    assert (fine["status"], fine["result"]) == ("completed", "second")


async def test_a_service_with_its_own_consumer_still_gets_messages(
    new_tasks: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `as_consumer` decides what handles the service's messages (ToolService overrides it):
    # a service that puts its own handler there gets its tasks through it.
    handled: list[str] = []
    stock = WorkflowService.as_consumer

    def own(self: WorkflowService, remote: bool = False) -> Any:
        consumer = stock(self, remote)
        inner = consumer.handler

        async def handler(message: QueueMessage) -> None:
            handled.append(message.action)
            await inner(message)

        consumer.handler = handler
        return consumer

    monkeypatch.setattr(WorkflowService, "as_consumer", own)
    async with gateway_client(CFG) as client:
        task = await run(client, "hi")
    assert (task["status"], task["result"]) == ("completed", "hi")
    assert handled == [ActionTypes.NEW_TASK]
    assert len(new_tasks) == 1
