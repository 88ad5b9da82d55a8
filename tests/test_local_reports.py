"""Services report to the control plane of their own process by call, without a bus message;
what the control plane raises on a report is logged and the task still ends exactly once."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from gateway.control_plane.plane import ControlPlane
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


async def test_a_control_plane_error_on_a_report_is_logged_and_the_task_still_ends(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    take_event = ControlPlane.take_event
    failures: list[str] = []

    async def flaky(self: ControlPlane, event: Any, publisher_id: str | None) -> None:
        if event.kind == "status" and event.status.value == "running" and not failures:
            failures.append(event.task_id)
            raise RuntimeError("the table is on fire")
        await take_event(self, event, publisher_id)

    monkeypatch.setattr(ControlPlane, "take_event", flaky)
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
