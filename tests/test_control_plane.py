"""The control plane: task lifecycle, long-poll, cancel, timeouts, discovery, remote services,
graceful shutdown."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from gateway.app import build_app
from gateway.config import parse_config
from gateway.control_plane.tasks import TaskRecord
from gateway.messages import ActionTypes, QueueMessage, ServiceDefinition, TaskResult, TaskStatus
from tests import fixtures_workflows as fw
from tests.conftest import ROOT, free_port, gateway_client, running_server
from tests.service_tokens import SERVICE_AUTH, SERVICE_TOKEN, with_remote

pytestmark = pytest.mark.anyio

CFG: dict[str, Any] = {
    "default_service": "gated",
    "shutdown_grace": 0.5,
    "services": {
        "gated": {"type": "workflow", "source": "tests.fixtures_workflows:gated"},
        "add": {"type": "workflow", "source": "tests.fixtures_workflows:add"},
        "failing": {"type": "workflow", "source": "tests.fixtures_workflows:failing"},
        "slow": {"type": "workflow", "source": "tests.fixtures_workflows:slow", "timeout": 0.3},
    },
}


def with_services(**changes: dict[str, Any]) -> dict[str, Any]:
    services = {name: {**entry, **changes.get(name, {})} for name, entry in CFG["services"].items()}
    return {**CFG, "services": services}


async def submit(client: httpx.AsyncClient, **body: Any) -> str:
    response = await client.post("/control_plane/tasks", json=body)
    assert response.status_code == 202, response.text
    return response.json()["task_id"]


async def result(client: httpx.AsyncClient, task_id: str, wait: float = 5) -> dict[str, Any]:
    response = await client.get(f"/control_plane/tasks/{task_id}/result", params={"wait": wait})
    assert response.status_code == 200, response.text
    return response.json()


def sse_events(body: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in body.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) <= {"error", "detail", "errors"} and body["error"] == code
    assert isinstance(body["detail"], str)
    return body


# -- status transitions ----------------------------------------------------------------------------
async def test_pending_running_completed() -> None:
    probe = fw.new_probe()
    async with gateway_client(with_services(gated={"max_concurrent_tasks": 1})) as client:
        first = await submit(client, input={"n": 1})
        second_response = await client.post(
            "/control_plane/tasks", json={"input": {"n": 2}, "service": "gated"}
        )
        assert second_response.json()["status"] == "pending"
        second = second_response.json()["task_id"]
        with anyio.fail_after(5):
            await probe.started_event(1).wait()
        assert (await client.get(f"/control_plane/tasks/{first}")).json()["status"] == "running"
        # the capacity of 1 is taken: the second task is accepted but still pending
        record = (await client.get(f"/control_plane/tasks/{second}")).json()
        assert record["status"] == "pending" and record["started_at"] is None

        probe.release.set()
        done = await result(client, second)
        assert done["status"] == "completed" and done["error"] is None
        assert done["result"] == {"n": 2}  # the workflow's return value, as JSON
        assert done["input"] == {"n": 2}  # as it was sent
        # stamped (their order is the stream's, below, not the wall clock's)
        assert None not in (done["created_at"], done["started_at"], done["finished_at"])
        assert (await result(client, first))["result"] == {"n": 1}

        stream = await client.get(f"/control_plane/tasks/{second}/events")
        statuses = [data["status"] for kind, data in sse_events(stream.text)]
        assert statuses == ["pending", "running", "completed"]
        assert sse_events(stream.text)[-1][0] == "result"


async def test_failure_is_an_error_never_a_result() -> None:
    async with gateway_client(CFG) as client:
        task_id = await submit(client, service="failing", input={"tag": "x1"})
        record = await result(client, task_id)
    assert record["status"] == "failed"
    assert record["error"] == "RuntimeError: kaboom x1"
    assert record["result"] is None  # never a "successful" result


async def test_bad_task_input_fails_the_task_with_the_reason() -> None:
    async with gateway_client(CFG) as client:
        task_id = await submit(client, service="add", input="[1, 2]")
        record = await result(client, task_id)
    assert record["status"] == "failed"
    assert "must be a JSON object of run kwargs" in record["error"]


async def test_service_timeout_ends_the_task_timed_out() -> None:
    async with gateway_client(CFG) as client:
        started = time.monotonic()
        task_id = await submit(client, service="slow", input={"seconds": 30})
        record = await result(client, task_id)
        assert time.monotonic() - started < 3
    assert record["status"] == "timed_out"
    assert "did not finish within 0.3s" in record["error"]


async def test_cancel_a_running_task_stops_the_workflow() -> None:
    probe = fw.new_probe()
    async with gateway_client(CFG) as client:
        task_id = await submit(client, input={"n": 1})
        with anyio.fail_after(5):
            await probe.started_event(1).wait()
        response = await client.post(f"/control_plane/tasks/{task_id}/cancel")
        assert response.status_code == 200
        assert response.json()["status"] == "cancelled"
        with anyio.fail_after(5):
            await probe.was_cancelled.wait()  # the step itself was cancelled
        probe.release.set()
        record = (await client.get(f"/control_plane/tasks/{task_id}")).json()
        assert record["status"] == "cancelled" and record["error"] == "cancelled by request"
        assert probe.finished == 0 and probe.running == 0

        again = await client.post(f"/control_plane/tasks/{task_id}/cancel")
        assert "already ended as cancelled" in assert_error(again, 409, "conflict")["detail"]


async def test_exactly_one_terminal_state() -> None:
    probe = fw.new_probe()
    apps: list[Any] = []
    async with gateway_client(CFG, app_out=apps) as client:
        control_plane = apps[0].state.runtime.control_plane
        task_id = await submit(client, input={"n": 1})
        witness = await submit(client, input={"n": 2})  # a live task used as a FIFO marker
        with anyio.fail_after(5):
            await probe.started_event(2).wait()
        await client.post(f"/control_plane/tasks/{task_id}/cancel")
        witness_events = control_plane.events.subscribe(witness)
        for message in (
            QueueMessage(
                type="control_plane",
                action=ActionTypes.COMPLETED_TASK,
                data=TaskResult(task_id=task_id, result="late answer").model_dump(mode="json"),
            ),
            QueueMessage(
                type="control_plane",
                action=ActionTypes.TASK_STREAM,
                data={"task_id": task_id, "kind": "status", "status": "running"},
            ),
            QueueMessage(
                type="control_plane",
                action=ActionTypes.TASK_STREAM,
                data={"task_id": witness, "kind": "event", "name": "marker"},
            ),
        ):
            # as the service the tasks went to would report them, late
            message.publisher_id = apps[0].state.runtime.services["gated"].publisher_id
            await control_plane.bus.publish(message)
        # the control plane handles its messages in order: once the marker is through, so are
        # the late result and the late status for the cancelled task
        with anyio.fail_after(5):
            async for event in witness_events:
                if event.name == "marker":
                    break
        witness_events.close()
        record = (await client.get(f"/control_plane/tasks/{task_id}")).json()
        assert record["status"] == "cancelled"
        assert record["result"] is None and record["error"] == "cancelled by request"
        with anyio.fail_after(5):
            await probe.was_cancelled.wait()
        probe.release.set()
        assert (await result(client, witness))["status"] == "completed"
        assert (await client.get(f"/control_plane/tasks/{task_id}")).json()["status"] == (
            "cancelled"
        )


async def test_long_poll_returns_the_moment_the_task_ends() -> None:
    probe = fw.new_probe()
    async with gateway_client(CFG) as client:
        task_id = await submit(client, input={"n": 7})
        with anyio.fail_after(5):
            await probe.started_event(1).wait()
        answered: dict[str, Any] = {}

        async def long_poll() -> None:
            response = await client.get(
                f"/control_plane/tasks/{task_id}/result", params={"wait": 5}
            )
            answered["at"] = time.monotonic()
            answered["response"] = response

        async with anyio.create_task_group() as tg:
            tg.start_soon(long_poll)
            await anyio.wait_all_tasks_blocked()
            assert not answered, "the long-poll must wait while the task runs"
            released_at = time.monotonic()
            probe.release.set()
        response = answered["response"]
        assert response.status_code == 200
        assert response.json()["status"] == "completed"
        assert response.json()["result"] == {"n": 7}
        assert answered["at"] - released_at < 1.0, "woken by the task's end, not by the timeout"


async def test_long_poll_times_out_with_202_and_the_current_status() -> None:
    probe = fw.new_probe()
    async with gateway_client(CFG) as client:
        task_id = await submit(client, input={"n": 1})
        with anyio.fail_after(5):
            await probe.started_event(1).wait()
        started = time.monotonic()
        response = await client.get(f"/control_plane/tasks/{task_id}/result", params={"wait": 0.2})
        elapsed = time.monotonic() - started
        assert response.status_code == 202
        assert response.json()["status"] == "running" and response.json()["result"] is None
        assert 0.18 <= elapsed < 2
        # wait=0 answers at once
        now = await client.get(f"/control_plane/tasks/{task_id}/result")
        assert now.status_code == 202
        probe.release.set()
        assert (await result(client, task_id))["status"] == "completed"
        # an ended task answers 200 at once, however long the wait
        started = time.monotonic()
        assert (await result(client, task_id, wait=30))["status"] == "completed"
        assert time.monotonic() - started < 1


# -- ids, routing, discovery -----------------------------------------------------------------------
async def test_unknown_ids_are_json_404() -> None:
    async with gateway_client(CFG) as client:
        for method, path in [
            ("GET", "/control_plane/tasks/nope"),
            ("GET", "/control_plane/tasks/nope/result?wait=1"),
            ("POST", "/control_plane/tasks/nope/cancel"),
            ("GET", "/control_plane/tasks/nope/events"),
            ("GET", "/control_plane/services/nope"),
        ]:
            body = assert_error(await client.request(method, path), 404, "not_found")
            assert "nope" in body["detail"]
        response = await client.post("/control_plane/tasks", json={"input": {}, "service": "nope"})
        assert assert_error(response, 404, "not_found")["detail"] == "no service named 'nope'"
        # our API names the target `service`; `agent_id` is for the reference routes only
        response = await client.post("/control_plane/tasks", json={"input": {}, "agent_id": "x"})
        assert "agent_id" in assert_error(response, 422, "validation_error")["detail"]


async def test_default_service_and_input_shown_as_sent() -> None:
    probe = fw.new_probe()
    probe.release.set()
    async with gateway_client(CFG) as client:
        by_default = await client.post("/control_plane/tasks", json={"input": {"n": 3}})
        assert by_default.json()["service"] == "gated"
        named = await client.post(
            "/control_plane/tasks", json={"input": {"a": 2, "b": 3}, "service": "add"}
        )
        assert named.json()["service"] == "add"
        text_form = await client.post(
            "/control_plane/tasks", json={"input": '{"a": 1, "b": 1}', "service": "add"}
        )
        done = await result(client, by_default.json()["task_id"])
        assert (done["result"], done["input"]) == ({"n": 3}, {"n": 3})
        done = await result(client, named.json()["task_id"])
        assert (done["result"], done["input"]) == (5, {"a": 2, "b": 3})
        done = await result(client, text_form.json()["task_id"])
        assert (done["result"], done["input"]) == (2, '{"a": 1, "b": 1}')


async def test_no_service_and_no_default_is_422() -> None:
    async with gateway_client({**CFG, "default_service": None}) as client:
        response = await client.post("/control_plane/tasks", json={"input": {}})
        assert "no default_service" in assert_error(response, 422, "validation_error")["detail"]


async def test_duplicate_task_id_is_409() -> None:
    fw.new_probe().release.set()
    async with gateway_client(CFG) as client:
        await submit(client, input={}, task_id="fixed-id", service="add")
        again = await client.post(
            "/control_plane/tasks", json={"input": {}, "task_id": "fixed-id", "service": "add"}
        )
        assert_error(again, 409, "conflict")


async def test_services_listing_has_the_reference_shape() -> None:
    async with gateway_client(CFG) as client:
        listing = (await client.get("/control_plane/services")).json()
        assert set(listing) == {"gated", "add", "failing", "slow"}
        for name, raw in listing.items():
            definition = ServiceDefinition.model_validate(raw)
            assert definition.service_name == name
            assert definition.type == "workflow" and definition.remote is False
            assert definition.prefix == f"/services/{name}"
            assert f"POST /services/{name}/run" in definition.endpoints
            assert f"POST /services/{name}/process_message" in definition.endpoints
            assert f"GET /services/{name}/" in definition.endpoints
        one = await client.get("/control_plane/services/add")
        assert one.status_code == 200 and one.json() == listing["add"]


# -- remote services -------------------------------------------------------------------------------
async def test_register_validation_and_conflicts() -> None:
    async with gateway_client(with_remote(CFG)) as client:
        url = "/control_plane/services/register"

        async def post(path: str, body: dict[str, Any]) -> httpx.Response:
            return await client.post(path, json=body, headers=SERVICE_AUTH)

        no_host = await post(url, {"service_name": "far"})
        assert "needs `host`" in assert_error(no_host, 422, "validation_error")["detail"]
        reserved = await post(url, {"service_name": "control_plane", "host": "h"})
        assert_error(reserved, 422, "validation_error")
        bad = await post(url, {"service_name": "", "host": "h", "port": 99999})
        locs = [e["loc"] for e in assert_error(bad, 422, "validation_error")["errors"]]
        assert ["body", "service_name"] in locs and ["body", "port"] in locs
        local = await post(url, {"service_name": "add", "host": "127.0.0.1"})
        assert "service of this gateway" in assert_error(local, 409, "conflict")["detail"]

        deregister = "/control_plane/services/deregister"
        unknown = await post(deregister, {"service_name": "ghost"})
        assert assert_error(unknown, 404, "not_found")["detail"] == "no service named 'ghost'"
        assert_error(await post(deregister, {"service_name": "add"}), 409, "conflict")

        # a remote one registers, is listed as remote, re-registers (replaces), leaves
        definition = {"service_name": "far", "host": "127.0.0.1", "port": 9, "prefix": "/x"}
        ok = await post(url, definition)
        assert ok.status_code == 200 and ok.json()["remote"] is True
        assert (await client.get("/control_plane/services/far")).json()["port"] == 9
        again = await post(url, {**definition, "port": 10})
        assert again.status_code == 200
        assert (await client.get("/control_plane/services/far")).json()["port"] == 10
        gone = await post(deregister, {"service_name": "far"})
        assert gone.json() == {"deregistered": "far"}
        assert_error(await client.get("/control_plane/services/far"), 404, "not_found")
        response = await client.post("/control_plane/tasks", json={"service": "far"})
        assert_error(response, 404, "not_found")


async def test_unreachable_remote_service_fails_its_task() -> None:
    async with gateway_client(with_remote(CFG)) as client:
        port = free_port()  # nothing listens there
        await client.post(
            "/control_plane/services/register",
            json={"service_name": "far", "host": "127.0.0.1", "port": port},
            headers=SERVICE_AUTH,
        )
        task_id = await submit(client, service="far", input={})
        record = await result(client, task_id)
    assert record["status"] == "failed"
    assert "ConnectError" in record["error"]


def test_remote_service_receives_tasks_over_http(tmp_path: Path) -> None:
    """A service in another process registers, gets NEW_TASK at /process_message, answers."""
    gateway_cfg = with_remote(
        {"services": {"echo": {"type": "workflow", "source": "examples.echo:workflow"}}}
    )
    with running_server(gateway_cfg, tmp_path) as gateway:
        port = free_port()
        log = (tmp_path / "remote.log").open("w")
        remote = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.remote_service",
                "--name",
                "adder",
                "--source",
                "tests.fixtures_workflows:add",
                "--port",
                str(port),
                "--control-plane",
                gateway.base_url + "/control_plane",
            ],
            cwd=ROOT,
            env={**os.environ, "GATEWAY_SERVICE_TOKEN": SERVICE_TOKEN},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            with httpx.Client(base_url=gateway.base_url, timeout=10) as client:
                deadline = time.monotonic() + 20
                while True:
                    assert remote.poll() is None, (tmp_path / "remote.log").read_text()
                    listed = client.get("/control_plane/services").json()
                    up = False
                    with contextlib.suppress(httpx.HTTPError):
                        up = httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
                    if "adder" in listed and up:
                        break
                    assert time.monotonic() < deadline, "remote service did not come up"
                    time.sleep(0.1)
                assert listed["adder"]["remote"] is True
                assert listed["adder"]["port"] == port

                task = client.post(
                    "/control_plane/tasks", json={"service": "adder", "input": {"a": 2, "b": 40}}
                ).json()
                record = client.get(
                    f"/control_plane/tasks/{task['task_id']}/result", params={"wait": 10}
                ).json()
                assert record["status"] == "completed", record
                assert record["result"] == 42

                left = client.post(
                    "/control_plane/services/deregister",
                    json={"service_name": "adder"},
                    headers=SERVICE_AUTH,
                )
                assert left.status_code == 200
                after = client.post("/control_plane/tasks", json={"service": "adder"})
                assert after.status_code == 404
        finally:
            remote.terminate()
            remote.wait(timeout=10)
            log.close()


# -- graceful shutdown -----------------------------------------------------------------------------
async def test_shutdown_lets_in_flight_tasks_finish_and_refuses_new_ones() -> None:
    probe = fw.new_probe()
    app = build_app(parse_config({**CFG, "shutdown_grace": 10}, "test-config"))
    runtime = app.state.runtime
    ready, stop, stopped = anyio.Event(), anyio.Event(), anyio.Event()

    async def serve() -> None:
        async with app.router.lifespan_context(app):
            ready.set()
            await stop.wait()
        stopped.set()

    transport = httpx.ASGITransport(app=app)
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://gw") as client,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(serve)
        await ready.wait()
        task_id = await submit(client, input={"n": 1})
        with anyio.fail_after(5):
            await probe.started_event(1).wait()
        stop.set()
        with anyio.fail_after(5):
            while runtime.control_plane.accepting:
                await anyio.sleep(0.01)
        refused = await client.post("/control_plane/tasks", json={"input": {"n": 2}})
        assert_error(refused, 503, "service_unavailable")
        assert refused.headers["retry-after"] == "5"
        assert (await client.get("/readyz")).status_code == 503
        started = time.monotonic()
        probe.release.set()
        with anyio.fail_after(5):
            await stopped.wait()
        assert time.monotonic() - started < 2, "the drain ends when the last task does"
    record: TaskRecord = runtime.control_plane.task(task_id)
    assert record.status is TaskStatus.COMPLETED
    assert record.result is not None and record.result.data == {"result": {"n": 1}}


async def test_shutdown_cancels_what_outlives_the_grace_period() -> None:
    probe = fw.new_probe()
    apps: list[Any] = []
    async with gateway_client({**CFG, "shutdown_grace": 0.3}, app_out=apps) as client:
        task_id = await submit(client, input={"n": 1})
        with anyio.fail_after(5):
            await probe.started_event(1).wait()
        started = time.monotonic()
    assert time.monotonic() - started < 3
    record = apps[0].state.runtime.control_plane.task(task_id)
    assert record.status is TaskStatus.CANCELLED
    assert record.error == "cancelled at shutdown"
    assert probe.was_cancelled.is_set() and probe.finished == 0
