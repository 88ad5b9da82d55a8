"""A workflow asks a person mid-run: InputRequiredEvent -> human task -> HumanResponseEvent."""

from __future__ import annotations

import json
import time

import anyio
import httpx
import pytest

from gateway.config import ConfigError, parse_config
from tests import fixtures_human
from tests.conftest import gateway_client, running_server
from tests.fixtures_human import wait_for_status, wait_for_tasks
from tests.fixtures_sessions import parse_sse, summary

pytestmark = pytest.mark.anyio


def config(workflow: str = "examples.approval:workflow", **desk: object) -> dict:
    return {
        "shutdown_grace": 0.2,
        "services": {
            "flow": {"type": "workflow", "source": workflow, "human_service": "desk"},
            "desk": {"type": "human", **desk},
        },
    }


async def start(client: httpx.AsyncClient, kwargs: dict) -> str:
    accepted = await client.post("/control_plane/tasks", json={"service": "flow", "input": kwargs})
    assert accepted.status_code == 202
    return accepted.json()["task_id"]


async def result(client: httpx.AsyncClient, task_id: str) -> dict:
    return (await client.get(f"/control_plane/tasks/{task_id}/result?wait=5")).json()


@pytest.mark.parametrize(("answer", "approved"), [("Yes", True), ("no, not today", False)])
async def test_approval_waits_for_a_person_then_finishes(answer: str, approved: bool) -> None:
    async with gateway_client(config()) as client:
        task_id = await start(client, {"request": "deploy v2"})
        await wait_for_status(client, task_id, "waiting_for_human")
        [question] = await wait_for_tasks(client, "desk", 1)
        assert question["task_id"] == f"{task_id}-human-1"
        assert question["input"] == "Approve deploy v2? Answer yes or no."
        assert question["tool_call"] is True
        assert question["requested_by"] == {"service": "flow", "task_id": task_id}

        handled = await client.post(
            f"/services/desk/tasks/{question['task_id']}/handle", json={"result": answer}
        )
        assert handled.status_code == 200
        record = await result(client, task_id)
        assert record["status"] == "completed"
        assert record["result"] == {
            "request": "deploy v2",
            "approved": approved,
            "answer": answer,
        }
        # The forwarded event names the human task, so a stream reader knows what to answer.
        events = (await client.get(f"/control_plane/tasks/{task_id}/events")).text
        asked = [
            json.loads(line[len("data: ") :])
            for line in events.splitlines()
            if line.startswith("data: ") and "InputRequiredEvent" in line
        ]
        assert asked[0]["data"]["human_task_id"] == question["task_id"]
        assert asked[0]["data"]["human_service"] == "desk"


async def test_an_answered_run_goes_back_to_running_and_its_stream_says_so() -> None:
    resume = fixtures_human.HOLDS["resume"] = anyio.Event()
    async with gateway_client(config("tests.fixtures_human:answer_then_hold_workflow")) as client:
        task_id = await start(client, {})
        [question] = await wait_for_tasks(client, "desk", 1)
        await wait_for_status(client, task_id, "waiting_for_human")
        await client.post(
            f"/services/desk/tasks/{question['task_id']}/handle", json={"result": "y"}
        )
        # the run goes on after the answer (it holds until `resume`): it is running again
        await wait_for_status(client, task_id, "running")
        resume.set()
        record = await result(client, task_id)
        assert record["status"] == "completed"
        stream = (await client.get(f"/control_plane/tasks/{task_id}/events")).text
    statuses = [s for s in summary(parse_sse(stream.splitlines())) if s.startswith("status:")]
    assert statuses == [
        "status:pending",
        "status:running",
        "status:waiting_for_human",
        "status:running",
    ]


async def test_wait_for_event_form_and_requirements() -> None:
    async with gateway_client(config("tests.fixtures_human:wait_for_event_workflow")) as client:
        task_id = await start(client, {})
        [question] = await wait_for_tasks(client, "desk", 1)
        assert question["input"] == "What is your name?"
        await client.post(
            f"/services/desk/tasks/{question['task_id']}/handle", json={"result": "Ada"}
        )
        record = await result(client, task_id)
        assert (record["status"], record["result"]) == ("completed", "hello Ada")


async def test_two_questions_in_one_run() -> None:
    async with gateway_client(config("tests.fixtures_human:two_questions_workflow")) as client:
        task_id = await start(client, {})
        [first] = await wait_for_tasks(client, "desk", 1)
        assert (first["task_id"], first["input"]) == (f"{task_id}-human-1", "first?")
        await client.post(f"/services/desk/tasks/{first['task_id']}/handle", json={"result": "a"})
        [second] = await wait_for_tasks(client, "desk", 1)
        assert (second["task_id"], second["input"]) == (f"{task_id}-human-2", "second?")
        await wait_for_status(client, task_id, "waiting_for_human")
        await client.post(f"/services/desk/tasks/{second['task_id']}/handle", json={"result": "b"})
        record = await result(client, task_id)
        assert record["result"] == ["a", "b"]


async def test_cancelling_the_workflow_withdraws_its_question() -> None:
    async with gateway_client(config()) as client:
        task_id = await start(client, {"request": "drop the database"})
        [question] = await wait_for_tasks(client, "desk", 1)
        cancelled = await client.post(f"/control_plane/tasks/{task_id}/cancel")
        assert cancelled.json()["status"] == "cancelled"
        await wait_for_tasks(client, "desk", 0)
        withdrawn = (await client.get(f"/services/desk/tasks/{question['task_id']}")).json()
        assert withdrawn["status"] == "cancelled"
        late = await client.post(
            f"/services/desk/tasks/{question['task_id']}/handle", json={"result": "yes"}
        )
        assert late.status_code == 409
        assert (await client.get(f"/control_plane/tasks/{task_id}")).json()["status"] == "cancelled"


async def test_an_unanswered_question_fails_the_run_with_the_reason() -> None:
    async with gateway_client(config(timeout=0.2)) as client:
        task_id = await start(client, {"request": "deploy"})
        record = await wait_for_status(client, task_id, "failed")
        assert f"human task {task_id}-human-1 in 'desk' ended without an answer" in record["error"]
        assert "no answer within 0.2s" in record["error"]


async def test_fn_input_answers_the_workflow_without_rest() -> None:
    desk = {"source": "tests.fixtures_human:auto_answer", "human_input_prompt": "{input_str}"}
    async with gateway_client(config(**desk)) as client:
        response = await client.post("/services/flow/run", json={"kwargs": {"request": "lunch"}})
        body = response.json()
        assert body["status"] == "completed"
        answer = body["result"]["answer"]
        assert answer.startswith(f"auto:{body['task_id']}-human-1:Approve lunch?")


def test_human_service_must_exist() -> None:
    broken = config()
    del broken["services"]["desk"]
    with pytest.raises(
        ConfigError, match="service 'flow': human_service: refers to unknown service 'desk'"
    ):
        parse_config(broken, "g.yaml")


def test_approval_end_to_end_through_uvicorn(tmp_path) -> None:
    demo = config()
    demo["services"]["desk"]["human_input_prompt"] = "Approval needed: {input_str}"
    with running_server(demo, tmp_path) as server, httpx.Client(base_url=server.base_url) as http:
        accepted = http.post(
            "/control_plane/tasks", json={"service": "flow", "input": {"request": "release 1.2"}}
        )
        assert accepted.status_code == 202
        task_id = accepted.json()["task_id"]

        deadline = time.monotonic() + 10
        while http.get(f"/control_plane/tasks/{task_id}").json()["status"] != "waiting_for_human":
            assert time.monotonic() < deadline, "the workflow never waited for a person"
            time.sleep(0.02)
        [question] = http.get("/services/desk/tasks").json()["items"]
        assert question["prompt"] == "Approval needed: Approve release 1.2? Answer yes or no."

        handled = http.post(
            f"/services/desk/tasks/{question['task_id']}/handle", json={"result": "approved"}
        )
        assert handled.status_code == 200
        record = http.get(f"/control_plane/tasks/{task_id}/result", params={"wait": 10}).json()
        assert record["status"] == "completed"
        assert record["result"] == {
            "request": "release 1.2",
            "approved": True,
            "answer": "approved",
        }
        assert (
            http.post(
                f"/services/desk/tasks/{question['task_id']}/handle", json={"result": "again"}
            ).status_code
            == 409
        )
