"""The internal endpoints are not an attack surface.

- remote services need a service token (not a user token), and are off without one configured;
- a task's outcome is accepted only from the service it was dispatched to, only while it runs,
  only with a terminal status (over HTTP and on the bus), and the task table refuses the rest;
- registering cannot point the gateway anywhere: a listener the gateway must not reach receives
  nothing, whatever host, port and prefix a registration tries.
"""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from gateway.control_plane.tasks import TaskRecord, TaskTable
from gateway.messages import ActionTypes, QueueMessage, TaskResult, TaskStatus
from tests.conftest import free_port, gateway_client, running_server
from tests.fixtures_faults import assert_error, gate, reset_gates, wait_status
from tests.service_tokens import SERVICE_AUTH, SERVICE_TOKEN, TOKENS_ENV, with_remote

OTHER_TOKEN = "another-service-token"
OTHER_AUTH = {"Authorization": f"Bearer {OTHER_TOKEN}"}
USER_TOKEN = "a-user-token"
USER_ENV = "GATEWAY_TEST_USER_TOKENS_INTERNAL"

SERVICES = {
    "gated": {"type": "workflow", "source": "tests.fixtures_faults:gated"},
    "desk": {"type": "human"},
}
REGISTER = "/control_plane/services/register"
MESSAGE = "/control_plane/process_message"


# -- a listener that records every request it gets -----------------------------------------------
class Listener:
    """A plain HTTP listener on a loopback address; answers 200 to anything and records it."""

    def __init__(self, host: str) -> None:
        self.requests: list[str] = []
        self.connections = 0
        listener = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                listener.connections += 1
                head = []
                while (line := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
                    head.append(line.decode("latin-1").strip())
                length = next(
                    (
                        int(h.split(":", 1)[1])
                        for h in head
                        if h.lower().startswith("content-length")
                    ),
                    0,
                )
                self.rfile.read(length)
                listener.requests.append("\n".join(head))
                self.wfile.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer((host, 0), Handler)
        self.host, self.port = self.server.server_address[:2]

    def __enter__(self) -> Listener:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def service_tokens(*tokens: str) -> Iterator[None]:
    import os

    old = os.environ[TOKENS_ENV]
    os.environ[TOKENS_ENV] = ",".join(tokens)
    try:
        yield
    finally:
        os.environ[TOKENS_ENV] = old


def config(**extra: Any) -> dict[str, Any]:
    return {**with_remote({"default_service": "gated", "services": SERVICES}), **extra}


# -- credentials ----------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_remote_services_are_off_unless_configured() -> None:
    async with gateway_client({"services": SERVICES}) as client:
        for path in (REGISTER, "/control_plane/services/deregister", MESSAGE):
            response = await client.post(path, json={}, headers=SERVICE_AUTH)
            detail = assert_error(response, 403)["detail"]
            assert "remote_services" in detail and "tokens_env" in detail
        response = await client.post("/services/gated/process_message", json={})
        assert "remote services are off" in assert_error(response, 403)["detail"]


@pytest.mark.anyio
async def test_internal_endpoints_take_service_tokens_only(monkeypatch) -> None:
    monkeypatch.setenv(USER_ENV, USER_TOKEN)
    cfg = config(auth={"tokens_env": USER_ENV})
    user = {"Authorization": f"Bearer {USER_TOKEN}"}
    async with gateway_client(cfg) as client:
        definition = {"service_name": "far", "host": "127.0.0.1", "port": free_port()}
        for headers in ({}, user, {"Authorization": "Bearer nope"}, OTHER_AUTH):
            assert_error(await client.post(REGISTER, json=definition, headers=headers), 401)
            assert_error(await client.post(MESSAGE, json={"type": "x"}, headers=headers), 401)
        # and a service token is not a user token
        assert_error(await client.get("/control_plane/tasks", headers=SERVICE_AUTH), 401)
        assert (
            await client.post(REGISTER, json=definition, headers=SERVICE_AUTH)
        ).status_code == 200
        assert (await client.get("/control_plane/services/far", headers=user)).status_code == 200


@pytest.mark.anyio
async def test_several_authorization_headers_are_400(monkeypatch) -> None:
    monkeypatch.setenv(USER_ENV, USER_TOKEN)
    cfg = config(auth={"tokens_env": USER_ENV})
    async with gateway_client(cfg) as client:
        twice = [("Authorization", f"Bearer {USER_TOKEN}"), ("Authorization", "Bearer other")]
        response = await client.get("/control_plane/tasks", headers=httpx.Headers(twice))
        assert "several Authorization" in assert_error(response, 400)["detail"]
        both = [("Authorization", f"Bearer {SERVICE_TOKEN}"), ("Authorization", "Bearer x")]
        response = await client.post(MESSAGE, json={}, headers=httpx.Headers(both))
        assert "several Authorization" in assert_error(response, 400)["detail"]


# -- who may report a task's outcome --------------------------------------------------------------
def completed(task_id: str, status: str = "completed", result: str = "forged") -> str:
    return QueueMessage(
        type="control_plane",
        action=ActionTypes.COMPLETED_TASK,
        data={"task_id": task_id, "status": status, "result": result},
    ).model_dump_json()


@pytest.mark.anyio
async def test_forged_and_non_terminal_messages_are_refused() -> None:
    reset_gates()
    with service_tokens(SERVICE_TOKEN, OTHER_TOKEN), Listener("127.0.0.1") as remote:
        apps: list[Any] = []
        async with gateway_client(config(), app_out=apps) as client:
            cp = apps[0].state.runtime.control_plane
            # a local task (running) and a task waiting for a person
            local = (await client.post("/control_plane/tasks", json={"service": "gated"})).json()
            await wait_status(client, local["task_id"], "running")
            human = (await client.post("/control_plane/tasks", json={"service": "desk"})).json()
            await wait_status(client, human["task_id"], "waiting_for_human")
            # a remote service and a task dispatched to it (the listener just accepts it)
            far = {"service_name": "far", "host": "127.0.0.1", "port": remote.port}
            assert (await client.post(REGISTER, json=far, headers=SERVICE_AUTH)).status_code == 200
            task = (await client.post("/control_plane/tasks", json={"service": "far"})).json()
            with anyio.fail_after(5):
                while not remote.requests:
                    await anyio.sleep(0.01)
            assert "authorization: bearer " + SERVICE_TOKEN in remote.requests[0].lower()
            active = cp.tasks.active_count()
            assert active == 3

            # results for tasks that were not dispatched to this token's service: 403
            for task_id in (local["task_id"], human["task_id"]):
                response = await client.post(
                    MESSAGE, content=completed(task_id), headers=SERVICE_AUTH
                )
                assert_error(response, 403)
            event = QueueMessage(
                type="control_plane",
                action=ActionTypes.TASK_STREAM,
                data={"task_id": local["task_id"], "kind": "status", "status": "completed"},
            ).model_dump_json()
            assert_error(await client.post(MESSAGE, content=event, headers=SERVICE_AUTH), 403)
            # the right task, the wrong token: 403; a non-terminal "completion": 422
            forged = completed(task["task_id"])
            assert_error(await client.post(MESSAGE, content=forged, headers=OTHER_AUTH), 403)
            for status in ("running", "pending", "waiting_for_human"):
                body = completed(task["task_id"], status)
                response = await client.post(MESSAGE, content=body, headers=SERVICE_AUTH)
                assert "terminal" in assert_error(response, 422)["detail"]
            assert cp.tasks.active_count() == active
            # tasks are created through the task API, never by a posted message
            for kind, target in (
                (ActionTypes.NEW_TASK, "control_plane"),
                (ActionTypes.NEW_TASK, "gated"),
                (ActionTypes.CANCEL_TASK, "gated"),
                (ActionTypes.SEND_EVENT, "gated"),
            ):
                message = QueueMessage(
                    type=target, action=kind, data={"task": {"task_id": local["task_id"]}}
                )
                response = await client.post(
                    MESSAGE, content=message.model_dump_json(), headers=SERVICE_AUTH
                )
                assert_error(response, 403)
            # nothing moved
            for task_id in (local["task_id"], human["task_id"], task["task_id"]):
                record = (await client.get(f"/control_plane/tasks/{task_id}")).json()
                assert not TaskStatus(record["status"]).is_terminal, record
                assert record["result"] is None

            # the service the task went to reports it: accepted once, then 409
            real = completed(task["task_id"], result="42")
            assert (
                await client.post(MESSAGE, content=real, headers=SERVICE_AUTH)
            ).status_code == 200
            record = (await client.get(f"/control_plane/tasks/{task['task_id']}")).json()
            assert record["status"] == "completed" and "42" in json.dumps(record["result"])
            again = await client.post(MESSAGE, content=real, headers=SERVICE_AUTH)
            assert_error(again, 409)
            unknown = await client.post(MESSAGE, content=completed("nope"), headers=SERVICE_AUTH)
            assert_error(unknown, 404)
            assert cp.tasks.active_count() == active - 1

            # another token cannot replace or remove the service
            assert_error(await client.post(REGISTER, json=far, headers=OTHER_AUTH), 403)
            gone = {"service_name": "far"}
            response = await client.post(
                "/control_plane/services/deregister", json=gone, headers=OTHER_AUTH
            )
            assert_error(response, 403)
            gate("main").opened.set()


@pytest.mark.anyio
async def test_the_planes_consumer_checks_the_sender_and_the_status() -> None:
    reset_gates()
    apps: list[Any] = []
    async with gateway_client(config(), app_out=apps) as client:
        runtime = apps[0].state.runtime
        cp = runtime.control_plane
        task_id = (await client.post("/control_plane/tasks", json={"service": "gated"})).json()[
            "task_id"
        ]
        await wait_status(client, task_id, "running")
        service = runtime.services["gated"]
        for publisher, status in (
            ("someone-else", TaskStatus.COMPLETED),  # not the service it went to
            (runtime.services["desk"].publisher_id, TaskStatus.COMPLETED),
            (service.publisher_id, TaskStatus.RUNNING),  # not a terminal status
        ):
            await cp.bus.publish(
                QueueMessage(
                    publisher_id=publisher,
                    type="control_plane",
                    action=ActionTypes.COMPLETED_TASK,
                    data=TaskResult(task_id=task_id, status=status, result="x").model_dump(
                        mode="json"
                    ),
                )
            )
        assert cp.tasks.get(task_id).status is TaskStatus.RUNNING
        assert cp.tasks.active_count() == 1
        gate("main").opened.set()
        record = (await client.get(f"/control_plane/tasks/{task_id}/result?wait=5")).json()
        assert record["status"] == "completed"
        assert cp.tasks.active_count() == 0


def test_the_task_table_refuses_a_non_terminal_finish() -> None:
    table = TaskTable()
    table.add(TaskRecord(task_id="t", service="s"))
    for status in (TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.WAITING_FOR_HUMAN):
        with pytest.raises(ValueError, match="not a terminal status"):
            table.finish("t", status)
        assert table.active_count() == 1 and table.active_count("s") == 1
    assert table.finish("t", TaskStatus.COMPLETED) is not None
    assert table.finish("t", TaskStatus.FAILED) is None  # once
    assert table.active_count() == 0 and table.active_count("s") == 0


# -- registering cannot point the gateway anywhere ------------------------------------------------
def test_registration_cannot_reach_a_listener_off_the_allow_list(tmp_path: Path) -> None:
    """The gateway may reach 127.0.0.2 only; a listener on 127.0.0.1 must receive nothing."""
    with (
        Listener("127.0.0.1") as target,
        Listener("127.0.0.2") as legit,
        running_server(
            config(remote_services={"tokens_env": TOKENS_ENV, "allow": ["127.0.0.2/32"]}),
            tmp_path,
        ) as server,
        httpx.Client(base_url=server.base_url, timeout=10, headers=SERVICE_AUTH) as client,
    ):
        p = target.port
        attempts = [
            {"host": "127.0.0.1", "port": p},  # not allowed
            {"host": "localhost", "port": p},  # a name not on the list (never resolved)
            {"host": "[::ffff:127.0.0.1]", "port": p},
            {"host": "2130706433", "port": p},  # 127.0.0.1 as one number
            {"host": f"127.0.0.1:{p}"},
            {"host": f"user:pw@127.0.0.1:{p}/x?", "port": legit.port},
            {"host": f"127.0.0.2@127.0.0.1:{p}", "port": legit.port},
            {"host": f"127.0.0.1:{p}/x#", "port": legit.port},
            {"host": "http://127.0.0.1", "port": p},
            {"host": "127.0.0.2", "port": legit.port, "prefix": f"#@127.0.0.1:{p}"},
            {"host": "127.0.0.2", "port": legit.port, "prefix": f"?@127.0.0.1:{p}/"},
            {"host": "127.0.0.2", "port": legit.port, "prefix": f"@127.0.0.1:{p}"},
            {"host": "127.0.0.2", "port": legit.port, "prefix": f"//127.0.0.1:{p}"},
            {"host": "127.0.0.2", "port": legit.port, "prefix": "/../x"},
            {"host": "127.0.0.2", "port": legit.port, "prefix": "/%2e%2e/x"},
            {"host": "127.0.0.2", "port": legit.port, "prefix": "/a b"},
            {"host": "127.0.0.2", "port": legit.port, "prefix": "/x\r\nHost: 127.0.0.1"},
        ]
        for n, attempt in enumerate(attempts):
            response = client.post(REGISTER, json={"service_name": f"evil{n}", **attempt})
            assert response.status_code in (403, 422), (attempt, response.text)
            assert set(response.json()) == {"error", "detail"}
            follow = client.post("/control_plane/tasks", json={"service": f"evil{n}"})
            assert follow.status_code == 404, follow.text
        # A legitimate registration is reached exactly where it said, with its token.
        ok = {"service_name": "legit", "host": "127.0.0.2", "port": legit.port, "prefix": "/svc"}
        assert client.post(REGISTER, json=ok).status_code == 200
        assert client.post("/control_plane/tasks", json={"service": "legit"}).status_code == 202
        for _ in range(100):
            if legit.requests:
                break
            threading.Event().wait(0.05)
        assert legit.requests[0].startswith("POST /svc/process_message HTTP/1.1")
        assert f"authorization: bearer {SERVICE_TOKEN}" in legit.requests[0].lower()
        assert target.connections == 0 and target.requests == []
