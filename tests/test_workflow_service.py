"""WorkflowService end to end in-process: /run, /, /process_message, the concurrency cap,
failure isolation and timeouts."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest

from gateway.app import build_app_for_services
from gateway.control_plane.tasks import TaskRecord
from gateway.messages import ActionTypes, NewTask, QueueMessage, TaskDefinition
from services.workflow import WorkflowService
from tests import fixtures_workflows as fw
from tests.conftest import gateway_client
from tests.service_tokens import SERVICE_AUTH, with_remote

pytestmark = pytest.mark.anyio

CFG: dict[str, Any] = {
    "services": {
        "echo": {"type": "workflow", "source": "examples.echo:workflow"},
        "stats": {"type": "workflow", "source": "examples.pipeline:build"},
        "add": {"type": "workflow", "source": "tests.fixtures_workflows:add"},
        "gated": {
            "type": "workflow",
            "source": "tests.fixtures_workflows:gated",
            "max_concurrent_tasks": 2,
            "description": "waits for the test",
        },
        "slow": {"type": "workflow", "source": "tests.fixtures_workflows:slow", "timeout": 0.2},
    }
}


async def test_run_with_kwargs() -> None:
    async with gateway_client(CFG) as client:
        response = await client.post("/services/echo/run", json={"kwargs": {"message": "hello"}})
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "completed" and body["result"] == "hello"
        assert body["input"] == {"message": "hello"} and body["error"] is None
        assert "data" not in body
        # the run is a task the control plane knows
        record = (await client.get(f"/control_plane/tasks/{body['task_id']}")).json()
        assert record["status"] == "completed" and record["service"] == "echo"


async def test_run_with_the_reference_input_string() -> None:
    async with gateway_client(CFG) as client:
        response = await client.post("/services/add/run", json={"input": '{"a": 20, "b": 22}'})
        assert response.status_code == 200
        assert response.json()["result"] == 42
        empty = await client.post("/services/echo/run", json={})
        assert empty.json()["status"] == "completed" and empty.json()["result"] == ""


async def test_run_structured_result_and_error_path() -> None:
    async with gateway_client(CFG) as client:
        ok = await client.post("/services/stats/run", json={"kwargs": {"numbers": [1, 2, 3]}})
        assert ok.json()["status"] == "completed"
        assert ok.json()["result"] == {
            "count": 3,
            "sum": 6.0,
            "mean": 2.0,
            "min": 1.0,
            "max": 3.0,
        }
        bad = await client.post("/services/stats/run", json={"kwargs": {"numbers": []}})
        assert bad.status_code == 200
        assert bad.json()["status"] == "failed"
        assert bad.json()["error"] == "ValueError: `numbers` must be a non-empty list"
        assert bad.json()["result"] is None


async def test_run_that_outlasts_its_wait_answers_202() -> None:
    probe = fw.new_probe()
    async with gateway_client(CFG) as client:
        response = await client.post("/services/gated/run", json={"kwargs": {"n": 1}, "wait": 0.1})
        assert response.status_code == 202
        assert response.json()["status"] == "running"
        probe.release.set()
        task_id = response.json()["task_id"]
        record = await client.get(f"/control_plane/tasks/{task_id}/result", params={"wait": 5})
        assert record.json()["status"] == "completed"


async def test_service_info() -> None:
    async with gateway_client(CFG) as client:
        info = (await client.get("/services/gated/")).json()
    assert info == {
        "service_name": "gated",
        "description": "waits for the test",
        "type": "workflow",
        "running": True,
        "num_outstanding_calls": 0,
    }


async def test_concurrency_cap_really_caps() -> None:
    probe = fw.new_probe()
    apps: list[Any] = []
    async with gateway_client(CFG, app_out=apps) as client:
        control_plane = apps[0].state.runtime.control_plane
        results: dict[int, dict[str, Any]] = {}

        async def run(n: int) -> None:
            response = await client.post("/services/gated/run", json={"kwargs": {"n": n}})
            results[n] = response.json()

        async with anyio.create_task_group() as tg:
            for n in range(6):
                tg.start_soon(run, n)
            with anyio.fail_after(5):
                await probe.started_event(2).wait()
            await anyio.wait_all_tasks_blocked()  # nothing else can get in now
            assert probe.started == 2 and probe.running == 2
            statuses = sorted(r.status.value for r in control_plane.tasks.all())
            assert statuses == ["pending"] * 4 + ["running"] * 2
            info = (await client.get("/services/gated/")).json()
            assert info["num_outstanding_calls"] == 6
            probe.release.set()
    assert probe.max_running == 2
    assert probe.started == probe.finished == 6
    assert {n: r["status"] for n, r in results.items()} == dict.fromkeys(range(6), "completed")
    assert {n: r["result"]["n"] for n, r in results.items()} == {n: n for n in range(6)}


async def test_a_failing_task_leaves_concurrent_ones_intact() -> None:
    probe = fw.new_probe()
    config = {"services": {**CFG["services"], "gated": {**CFG["services"]["gated"]}}}
    config["services"]["gated"]["max_concurrent_tasks"] = 4
    async with gateway_client(config) as client:
        results: dict[int, dict[str, Any]] = {}

        async def run(n: int) -> None:
            kwargs = {"n": n, "fail": n == 2}
            response = await client.post("/services/gated/run", json={"kwargs": kwargs})
            results[n] = response.json()

        async with anyio.create_task_group() as tg:
            for n in range(4):
                tg.start_soon(run, n)
            with anyio.fail_after(5):
                await probe.started_event(4).wait()  # all four are inside the workflow at once
            probe.release.set()
        # the service still works after the failure
        after = await client.post("/services/gated/run", json={"kwargs": {"n": 9}})
    assert results[2]["status"] == "failed"
    assert results[2]["error"] == "ValueError: task 2 was told to fail"
    for n in (0, 1, 3):
        assert results[n]["status"] == "completed", results[n]
        assert results[n]["result"] == {"n": n} and results[n]["error"] is None
    assert after.json()["status"] == "completed"


async def test_timeout_ends_the_run_timed_out() -> None:
    async with gateway_client(CFG) as client:
        with anyio.fail_after(5):
            response = await client.post("/services/slow/run", json={"kwargs": {"seconds": 30}})
        body = response.json()
    assert body["status"] == "timed_out"
    assert body["error"] == "slow did not finish within 0.2s"


async def test_workflow_level_timeout_is_timed_out_too() -> None:
    service = WorkflowService(service_name="tight", workflow=fw.SlowWorkflow(timeout=0.1))
    app = build_app_for_services([service])
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            response = await client.post("/services/tight/run", json={"kwargs": {"seconds": 5}})
    assert response.json()["status"] == "timed_out"
    assert "timed out" in response.json()["error"].lower()


async def test_process_message_new_task() -> None:
    apps: list[Any] = []
    async with gateway_client(with_remote(CFG), app_out=apps) as client:
        control_plane = apps[0].state.runtime.control_plane
        # a task accepted elsewhere (e.g. by a gateway that delivers to us remotely)
        control_plane.tasks.add(TaskRecord(task_id="remote-1", service="add"))
        message = QueueMessage(
            publisher_id="elsewhere",
            type="add",
            action=ActionTypes.NEW_TASK,
            data=NewTask(
                task=TaskDefinition(task_id="remote-1", input='{"a": 1, "b": 2}', agent_id="add")
            ).model_dump(mode="json"),
        )
        response = await client.post(
            "/services/add/process_message", content=message.model_dump_json(), headers=SERVICE_AUTH
        )
        assert response.status_code == 200 and response.json() == {"accepted": message.id_}
        record = await client.get("/control_plane/tasks/remote-1/result", params={"wait": 5})
        assert record.status_code == 200
        assert record.json()["status"] == "completed"
        assert record.json()["result"] == 3


async def test_process_message_rejects_what_it_cannot_handle() -> None:
    async with gateway_client(with_remote(CFG)) as client:
        url = "/services/add/process_message"
        wrong_action = QueueMessage(type="add", action=ActionTypes.COMPLETED_TOOL_CALL)
        response = await client.post(
            url, content=wrong_action.model_dump_json(), headers=SERVICE_AUTH
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"] == "validation_error"
        assert "does not handle" in response.json()["detail"]
        broken_task = QueueMessage(type="add", action=ActionTypes.NEW_TASK, data={"task": 5})
        response = await client.post(
            url, content=broken_task.model_dump_json(), headers=SERVICE_AUTH
        )
        assert response.status_code == 422, response.text
        assert "cannot handle this message" in response.json()["detail"]
        not_a_message = await client.post(url, json={"action": "dance"}, headers=SERVICE_AUTH)
        assert not_a_message.status_code == 422
        assert not_a_message.json()["errors"][0]["loc"] == ["body", "action"]
