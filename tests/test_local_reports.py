"""Services report to the control plane of their own process by call, without a bus message;
what the control plane raises on a report is logged and the task still ends exactly once."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from gateway.control_plane.plane import ControlPlane
from gateway.messages import TaskEvent, TaskStatus
from tests.conftest import gateway_client

pytestmark = pytest.mark.anyio

CFG: dict[str, Any] = {
    "services": {"echo": {"type": "workflow", "source": "examples.echo:workflow"}}
}


async def test_a_local_run_reports_without_a_bus_message() -> None:
    apps: list = []
    async with gateway_client(CFG, app_out=apps) as client:
        for n in range(3):
            answer = await client.post("/services/echo/run", json={"kwargs": {"message": n}})
            assert answer.json()["status"] == "completed"
        events = (await client.get(f"/control_plane/tasks/{answer.json()['task_id']}/events")).text
        runtime = apps[0].state.runtime
        stats = {s["consumer_id"]: s for s in runtime.bus.stats()}
    # pending, running and the result reached the task's stream all the same
    assert events.index('"pending"') < events.index('"running"') < events.index('"result"')
    assert stats["cp"]["delivered"] == 0  # three tasks, two reports each: none through the bus


async def test_a_status_report_by_call_builds_no_event_until_one_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[Any] = []
    original = TaskEvent.__init__

    def counting(self: TaskEvent, **fields: Any) -> None:
        built.append(fields.get("status"))
        original(self, **fields)

    async with gateway_client(CFG) as client:
        monkeypatch.setattr(TaskEvent, "__init__", counting)
        answer = await client.post("/services/echo/run", json={"kwargs": {"message": "hi"}})
        assert answer.json()["status"] == "completed"
        assert built == []  # pending and running are kept compact, not as TaskEvents
        task_id = answer.json()["task_id"]
        frames = (await client.get(f"/control_plane/tasks/{task_id}/events")).text
    # written when read, in order, with their numbers
    assert "id: 1\n" in frames and "id: 2\n" in frames and "id: 3\n" in frames
    assert frames.index('"pending"') < frames.index('"running"') < frames.index('"result"')


async def test_a_control_plane_error_on_a_report_is_logged_and_the_task_still_ends(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    take_status = ControlPlane.take_status
    failures: list[str] = []

    async def flaky(self: ControlPlane, task_id: str, status: Any, publisher_id: Any) -> None:
        if status.value == "running" and not failures:
            failures.append(task_id)
            raise RuntimeError("the table is on fire")
        await take_status(self, task_id, status, publisher_id)

    monkeypatch.setattr(ControlPlane, "take_status", flaky)
    caplog.set_level(logging.ERROR, logger="services")
    async with gateway_client(CFG) as client:
        answer = await client.post("/services/echo/run", json={"kwargs": {"message": "hi"}})
        task = answer.json()
        again = await client.post("/services/echo/run", json={"kwargs": {"message": "again"}})
    assert failures == [task["task_id"]]
    # the lost `running` report did not fail the task: it ran and completed, once
    assert (task["status"], task["result"]) == ("completed", "hi")
    assert again.json()["status"] == "completed"
    assert "the control plane failed on a report for task " + task["task_id"] in caplog.text
    assert "the table is on fire" in caplog.text


async def test_a_service_that_publishes_events_its_own_way_still_sees_its_status_reports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `report_status` went through `publish_event`: an override of it still sees `running`.
    from services.workflow import WorkflowService

    seen: list[Any] = []
    stock = WorkflowService.publish_event

    async def own(self: WorkflowService, event: TaskEvent) -> None:
        seen.append((event.kind, event.status))
        await stock(self, event)

    monkeypatch.setattr(WorkflowService, "publish_event", own)
    async with gateway_client(CFG) as client:
        answer = await client.post("/services/echo/run", json={"kwargs": {"message": "hi"}})
        assert answer.json()["status"] == "completed"
        frames = (await client.get(f"/control_plane/tasks/{answer.json()['task_id']}/events")).text
    assert ("status", TaskStatus.RUNNING) in seen
    assert frames.index('"pending"') < frames.index('"running"') < frames.index('"result"')
