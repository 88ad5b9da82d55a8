"""HumanService: every endpoint and its errors, tool-call mode, fn_input mode, the prompt check."""

from __future__ import annotations

import anyio
import pytest

from gateway.bus import Consumer
from gateway.config import ConfigError, build_services, parse_config
from gateway.messages import ActionTypes, QueueMessage, TaskDefinition, ToolCallResult
from tests.conftest import gateway_client
from tests.fixtures_human import RELEASE_SYNC, wait_for_status, wait_for_tasks
from tests.service_tokens import SERVICE_AUTH, with_remote

pytestmark = pytest.mark.anyio


def config(**desk: object) -> dict:
    return {"shutdown_grace": 0.2, "services": {"desk": {"type": "human", **desk}}}


async def test_home_describes_the_queue() -> None:
    async with gateway_client(config(human_input_prompt="Q: {input_str}")) as client:
        info = (await client.get("/services/desk/")).json()
        assert info["type"] == "human"
        assert info["num_tasks"] == 0
        assert info["answered_by"] == "rest"
        assert info["human_input_prompt"] == "Q: {input_str}"
        definition = (await client.get("/control_plane/services/desk")).json()
        assert "POST /services/desk/tasks/{task_id}/handle" in definition["endpoints"]


async def test_rest_task_lifecycle_with_history_and_errors() -> None:
    async with gateway_client(config(human_input_prompt="Please answer: {input_str}")) as client:
        created = await client.post("/services/desk/tasks", json={"input": "Ship it?"})
        assert created.status_code == 201
        task = created.json()
        task_id = task["task_id"]
        assert task["status"] == "waiting_for_human"
        assert task["prompt"] == "Please answer: Ship it?"
        assert task["tool_call"] is False

        # The control plane tracks it and shows it waiting for a person.
        await wait_for_status(client, task_id, "waiting_for_human")
        listed = (await client.get("/services/desk/tasks")).json()
        assert [t["task_id"] for t in listed["items"]] == [task_id] and listed["total"] == 1
        assert listed["items"][0]["service"] == "desk"
        assert (await client.get(f"/services/desk/tasks/{task_id}")).json()["input"] == "Ship it?"

        answered = await client.post(f"/services/desk/tasks/{task_id}/handle", json={"result": "y"})
        assert answered.status_code == 200
        assert answered.json()["status"] == "completed"

        record = (await client.get(f"/control_plane/tasks/{task_id}/result?wait=5")).json()
        assert record["status"] == "completed"
        assert record["result"] == "y"
        assert [(m["role"], m["content"]) for m in record["history"]] == [
            ("assistant", "Please answer: Ship it?"),
            ("user", "y"),
        ]

        # Answered: gone from the queue, still readable, and a second answer is a conflict.
        assert (await client.get("/services/desk/tasks")).json() == {
            "items": [],
            "total": 0,
            "next": None,
        }
        ended = (await client.get(f"/services/desk/tasks/{task_id}")).json()
        assert (ended["status"], ended["result"]) == ("completed", "y")
        again = await client.post(f"/services/desk/tasks/{task_id}/handle", json={"result": "n"})
        assert again.status_code == 409
        assert again.json()["error"] == "conflict"
        final = (await client.get(f"/control_plane/tasks/{task_id}")).json()
        assert final["result"] == "y"


async def test_unknown_ids_and_bad_bodies_are_json_errors() -> None:
    async with gateway_client(config()) as client:
        missing = await client.get("/services/desk/tasks/nope")
        assert missing.status_code == 404
        assert missing.json() == {"error": "not_found", "detail": "no task 'nope' in desk"}
        handle = await client.post("/services/desk/tasks/nope/handle", json={"result": "x"})
        assert handle.status_code == 404
        assert handle.json()["error"] == "not_found"

        created = (await client.post("/services/desk/tasks", json={"input": "q"})).json()
        no_result = await client.post(f"/services/desk/tasks/{created['task_id']}/handle", json={})
        assert no_result.status_code == 422
        not_json = await client.post(
            f"/services/desk/tasks/{created['task_id']}/handle",
            content=b"yes",
            headers={"content-type": "application/json"},
        )
        assert not_json.status_code == 400
        bad_id = await client.post("/services/desk/tasks", json={"input": "q", "task_id": "a b"})
        assert bad_id.status_code == 422
        duplicate = await client.post(
            "/services/desk/tasks", json={"input": "q", "task_id": created["task_id"]}
        )
        assert duplicate.status_code == 409
        no_session = await client.post(
            "/services/desk/tasks", json={"input": "q", "session_id": "missing"}
        )
        assert no_session.status_code == 404
        # The refused tasks left nothing behind.
        assert (await client.get("/services/desk/tasks")).json()["total"] == 1
        bad_page = await client.get("/services/desk/tasks?limit=0")
        assert bad_page.status_code == 422


async def test_paging_newest_first_or_in_arrival_order_with_the_total() -> None:
    async with gateway_client(config()) as client:
        ids = []
        for n in range(7):
            body = {"input": f"q{n}", "task_id": f"t{n}"}
            ids.append((await client.post("/services/desk/tasks", json=body)).json()["task_id"])
        pages = []
        for offset in (0, 3, 6, 9):
            response = await client.get(f"/services/desk/tasks?limit=3&offset={offset}&order=asc")
            assert response.json()["total"] == 7
            pages.append([t["task_id"] for t in response.json()["items"]])
        assert pages == [ids[0:3], ids[3:6], ids[6:7], []]
        newest = (await client.get("/services/desk/tasks?limit=3")).json()["items"]
        assert [t["task_id"] for t in newest] == ["t6", "t5", "t4"]  # the default: newest first
        await client.post("/services/desk/tasks/t4/handle", json={"result": "done"})
        rest = (await client.get("/services/desk/tasks?limit=10&order=asc")).json()["items"]
        assert [t["task_id"] for t in rest] == ["t0", "t1", "t2", "t3", "t5", "t6"]
        bad = await client.get("/services/desk/tasks?order=sideways")
        assert bad.status_code == 422 and "order" in bad.json()["detail"]


async def test_tasks_from_the_control_plane_wait_and_complete() -> None:
    async with gateway_client(config()) as client:
        accepted = await client.post(
            "/control_plane/tasks", json={"service": "desk", "input": "Which region?"}
        )
        task_id = accepted.json()["task_id"]
        await wait_for_status(client, task_id, "waiting_for_human")
        [waiting] = await wait_for_tasks(client, "desk", 1)
        assert waiting["task_id"] == task_id
        await client.post(f"/services/desk/tasks/{task_id}/handle", json={"result": "eu-west"})
        record = (await client.get(f"/control_plane/tasks/{task_id}/result?wait=5")).json()
        assert (record["status"], record["result"]) == ("completed", "eu-west")


async def test_cancel_withdraws_the_task_exactly_once() -> None:
    async with gateway_client(config()) as client:
        task_id = (await client.post("/services/desk/tasks", json={"input": "q"})).json()["task_id"]
        await wait_for_status(client, task_id, "waiting_for_human")
        cancelled = await client.post(f"/control_plane/tasks/{task_id}/cancel")
        assert cancelled.json()["status"] == "cancelled"
        await wait_for_tasks(client, "desk", 0)
        late = await client.post(f"/services/desk/tasks/{task_id}/handle", json={"result": "x"})
        assert late.status_code == 409
        assert (await client.get(f"/control_plane/tasks/{task_id}")).json()["status"] == "cancelled"


async def test_timeout_ends_waiting_tasks() -> None:
    async with gateway_client(config(timeout=0.2)) as client:
        task_id = (await client.post("/services/desk/tasks", json={"input": "q"})).json()["task_id"]
        record = await wait_for_status(client, task_id, "timed_out")
        assert "no answer within 0.2s" in record["error"]
        late = await client.post(f"/services/desk/tasks/{task_id}/handle", json={"result": "x"})
        assert late.status_code == 409
        # The expiry sleeper keeps working for tasks that arrive later.
        second = (await client.post("/services/desk/tasks", json={"input": "q2"})).json()
        await wait_for_status(client, second["task_id"], "timed_out")


async def test_process_message_endpoint_accepts_bus_messages() -> None:
    async with gateway_client(with_remote(config())) as client:
        message = QueueMessage(
            type="desk",
            action=ActionTypes.NEW_TASK,
            data={"task": TaskDefinition(task_id="remote-1", input="from afar").model_dump()},
        )
        response = await client.post(
            "/services/desk/process_message",
            content=message.model_dump_json(),
            headers=SERVICE_AUTH,
        )
        assert response.status_code == 200
        [task] = await wait_for_tasks(client, "desk", 1)
        assert task["task_id"] == "remote-1"
        wrong = QueueMessage(type="desk", action=ActionTypes.COMPLETED_TASK, data={})
        refused = await client.post(
            "/services/desk/process_message", content=wrong.model_dump_json(), headers=SERVICE_AUTH
        )
        assert refused.status_code == 422
        malformed = QueueMessage(type="desk", action=ActionTypes.NEW_TASK, data={"task": "x"})
        bad = await client.post(
            "/services/desk/process_message",
            content=malformed.model_dump_json(),
            headers=SERVICE_AUTH,
        )
        assert bad.status_code == 422
        assert (await client.get("/services/desk/tasks")).json()["total"] == 1


async def test_tool_call_mode_answers_the_caller_not_the_control_plane() -> None:
    apps: list = []
    async with gateway_client(config(), app_out=apps) as client:
        bus = apps[0].state.runtime.bus
        send, receive = anyio.create_memory_object_stream[QueueMessage](4)
        bus.register_consumer(Consumer(message_type="asker", handler=send.send, id_="asker"))
        for task_id in ("tc-1", "tc-2"):
            await bus.publish(
                QueueMessage(
                    publisher_id="asker",
                    type="desk",
                    action=ActionTypes.NEW_TOOL_CALL,
                    data=TaskDefinition(task_id=task_id, input="2+2?").model_dump(),
                )
            )
        tasks = await wait_for_tasks(client, "desk", 2)
        assert all(t["tool_call"] for t in tasks)

        await client.post("/services/desk/tasks/tc-1/handle", json={"result": "4"})
        with anyio.fail_after(5):
            reply = await receive.receive()
        assert reply.action == ActionTypes.COMPLETED_TOOL_CALL
        result = ToolCallResult.model_validate(reply.data)
        assert (result.id_, result.result, result.is_error) == ("tc-1", "4", False)
        assert result.tool_message.role == "tool"
        assert result.tool_message.additional_kwargs["name"] == "desk-as-tool"
        assert (await client.get("/control_plane/tasks/tc-1")).status_code == 404

        # Withdrawn by its caller: the caller hears an error, the queue forgets it.
        await bus.publish(
            QueueMessage(type="desk", action=ActionTypes.CANCEL_TASK, data={"task_id": "tc-2"})
        )
        with anyio.fail_after(5):
            withdrawn = ToolCallResult.model_validate((await receive.receive()).data)
        assert (withdrawn.id_, withdrawn.is_error, withdrawn.result) == ("tc-2", True, "cancelled")
        assert (await client.get("/services/desk/tasks")).json() == {
            "items": [],
            "total": 0,
            "next": None,
        }


async def test_fn_input_answers_instead_of_rest() -> None:
    desk = config(source="tests.fixtures_human:auto_answer", human_input_prompt="{input_str}\n")
    async with gateway_client(desk) as client:
        info = (await client.get("/services/desk/")).json()
        assert info["answered_by"] == "fn_input"
        accepted = await client.post(
            "/control_plane/tasks", json={"service": "desk", "input": "Approve?"}
        )
        task_id = accepted.json()["task_id"]
        record = (await client.get(f"/control_plane/tasks/{task_id}/result?wait=5")).json()
        assert record["status"] == "completed"
        assert record["result"] == f"auto:{task_id}:Approve?"
        assert record["history"][1] == {
            "role": "user",
            "content": f"auto:{task_id}:Approve?",
            "additional_kwargs": {},
        }


async def test_sync_fn_input_runs_off_the_event_loop() -> None:
    RELEASE_SYNC.clear()
    async with gateway_client(config(source="tests.fixtures_human:blocking_answer")) as client:
        task_id = (await client.post("/services/desk/tasks", json={"input": "q"})).json()["task_id"]
        await wait_for_status(client, task_id, "waiting_for_human")
        # blocking_answer is blocked right now; the loop still serves requests.
        with anyio.fail_after(2):
            assert (await client.get("/services/desk/")).status_code == 200
        RELEASE_SYNC.set()
        record = (await client.get(f"/control_plane/tasks/{task_id}/result?wait=5")).json()
        assert record["status"] == "completed"
        assert record["result"].startswith("thread:")
        assert record["result"] != "thread:MainThread"


async def test_fn_input_failure_fails_the_task_and_rest_can_still_win() -> None:
    async with gateway_client(config(source="tests.fixtures_human:broken_answer")) as client:
        task_id = (await client.post("/services/desk/tasks", json={"input": "q"})).json()["task_id"]
        record = await wait_for_status(client, task_id, "failed")
        assert "RuntimeError: the pager is down" in record["error"]
    async with gateway_client(config(source="tests.fixtures_human:never_answers")) as client:
        task_id = (await client.post("/services/desk/tasks", json={"input": "q"})).json()["task_id"]
        answered = await client.post(
            f"/services/desk/tasks/{task_id}/handle", json={"result": "me"}
        )
        assert answered.status_code == 200
        record = (await client.get(f"/control_plane/tasks/{task_id}/result?wait=5")).json()
        assert (record["status"], record["result"]) == ("completed", "me")


@pytest.mark.parametrize(
    ("template", "complaint"),
    [
        ("Please help.", "must contain {input_str}"),
        ("{input_str} for {user}", "may only use {input_str}, found {user}"),
        ("{input_str", "not a valid template"),
    ],
)
def test_prompt_template_is_checked_at_start_up(template: str, complaint: str) -> None:
    parsed = parse_config(config(human_input_prompt=template), "gateway.yaml")
    with pytest.raises(ConfigError) as error:
        build_services(parsed)
    message = str(error.value)
    assert message.startswith("gateway.yaml: service 'desk': human_input_prompt: ")
    assert complaint in message


def test_fn_input_must_be_callable() -> None:
    parsed = parse_config(config(source="tests.fixtures_human:not_a_component"), "g.yaml")
    with pytest.raises(ConfigError, match="service 'desk': fn_input"):
        build_services(parsed)
