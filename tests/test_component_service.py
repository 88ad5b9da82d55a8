"""ComponentService: every kind of component, the output rule, the task form, errors."""

from __future__ import annotations

import json

import anyio
import pytest

from gateway.bus import Consumer
from gateway.config import ConfigError, build_services, parse_config
from gateway.messages import ActionTypes, QueueMessage, TaskDefinition, ToolCallResult
from services.component import ComponentKind
from tests.conftest import gateway_client
from tests.service_tokens import SERVICE_AUTH, with_remote

pytestmark = pytest.mark.anyio

FIX = "tests.fixtures_human"


def config(**components: str) -> dict:
    services = {name: {"type": "component", "source": src} for name, src in components.items()}
    return {"shutdown_grace": 0.2, "services": services}


async def test_home_names_the_kind_of_component() -> None:
    sources = {
        "old": f"{FIX}:old_component",
        "adder": f"{FIX}:add",
        "concat": f"{FIX}:sync_concat",
        "qe": "tests.fixtures_components:query_engine",
        "ret": "tests.fixtures_components:retriever",
    }
    async with gateway_client(config(**sources)) as client:
        kinds = {name: (await client.get(f"/services/{name}/")).json() for name in sources}
        assert {n: info["component_kind"] for n, info in kinds.items()} == {
            "old": ComponentKind.ARUN_COMPONENT,
            "adder": ComponentKind.ASYNC_CALLABLE,
            "concat": ComponentKind.SYNC_CALLABLE,
            "qe": ComponentKind.QUERY_ENGINE,
            "ret": ComponentKind.RETRIEVER,
        }
        assert kinds["adder"]["type"] == "component"
        definition = (await client.get("/control_plane/services/adder")).json()
        assert sorted(definition["endpoints"]) == [
            "GET /services/adder/",
            "POST /services/adder/process_message",
            "POST /services/adder/run",
        ]


async def test_async_callable_dict_output_is_the_result() -> None:
    async with gateway_client(config(adder=f"{FIX}:add")) as client:
        response = await client.post("/services/adder/run", json={"kwargs": {"a": 2, "b": 3.5}})
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "completed"
        assert body["result"] == {"sum": 5.5}
        assert body["input"] == {"a": 2, "b": 3.5}
        assert "data" not in body


async def test_sync_callable_runs_in_a_worker_thread() -> None:
    async with gateway_client(config(concat=f"{FIX}:sync_concat")) as client:
        body = (await client.post("/services/concat/run", json={"kwargs": {"b": 2, "a": 1}})).json()
        # A string output is the result as is; `@False` = not the main (event loop) thread.
        assert body["result"] == "12@False"


async def test_reference_protocol_and_task_form_input() -> None:
    async with gateway_client(config(old=f"{FIX}:old_component")) as client:
        task_form = {"input": json.dumps({"input": "quiet"})}
        body = (await client.post("/services/old/run", json=task_form)).json()
        assert body["result"] == {"output": "QUIET"}
        assert body["input"] == task_form["input"]  # shown as sent
        both = await client.post("/services/old/run", json={"kwargs": {}, "input": "{}"})
        assert both.status_code == 422
        not_object = await client.post("/services/old/run", json={"input": "[1, 2]"})
        assert not_object.status_code == 422
        assert "JSON object" in json.dumps(not_object.json())


async def test_query_engine_and_retriever() -> None:
    sources = {
        "qe": "tests.fixtures_components:query_engine",
        "ret": "tests.fixtures_components:retriever",
    }
    async with gateway_client(config(**sources)) as client:
        answer = await client.post("/services/qe/run", json={"kwargs": {"query": "refunds?"}})
        assert answer.json()["result"] == "Refunds are issued within 14 days."
        nodes = await client.post("/services/ret/run", json={"kwargs": {"q": "shipping"}})
        nodes = nodes.json()
        [hit] = nodes["result"]
        assert hit["score"] == 1.0
        assert hit["node"]["text"] == "Shipping takes 3 to 5 business days."
        unclear = await client.post("/services/qe/run", json={"kwargs": {"a": 1, "b": 2}})
        assert unclear.json()["status"] == "failed"
        assert "takes one query: pass `query`" in unclear.json()["error"]


async def test_non_json_output_is_converted_by_one_rule() -> None:
    sources = {"odd": f"{FIX}:odd_output", "opaque": f"{FIX}:opaque_output"}
    async with gateway_client(config(**sources)) as client:
        odd = (await client.post("/services/odd/run", json={"kwargs": {}})).json()
        assert odd["status"] == "completed"
        assert odd["result"] == {
            "point": {"x": 1, "y": 2},
            "thing": "<opaque thing>",
            "pair": [1, 2],
        }
        opaque = (await client.post("/services/opaque/run", json={"kwargs": {}})).json()
        assert opaque["result"] == "<opaque thing>"


async def test_control_plane_tasks_and_failures() -> None:
    sources = {"adder": f"{FIX}:add", "broken": f"{FIX}:failing_component"}
    async with gateway_client(config(**sources)) as client:
        ok = await client.post(
            "/control_plane/tasks", json={"service": "adder", "input": {"a": 1, "b": 2}}
        )
        record = (
            await client.get(f"/control_plane/tasks/{ok.json()['task_id']}/result?wait=5")
        ).json()
        assert (record["status"], record["result"]) == ("completed", {"sum": 3})

        text = await client.post("/control_plane/tasks", json={"service": "adder", "input": "hi"})
        record = (
            await client.get(f"/control_plane/tasks/{text.json()['task_id']}/result?wait=5")
        ).json()
        assert record["status"] == "failed"
        assert "task input is not JSON" in record["error"]

        missing = (await client.post("/services/adder/run", json={"kwargs": {"a": 1}})).json()
        assert missing["status"] == "failed"
        assert "TypeError" in missing["error"]

        broken = (await client.post("/services/broken/run", json={"kwargs": {}})).json()
        assert broken["status"] == "failed"
        assert broken["error"] == "ValueError: bad input for the component"


async def test_process_message_and_tool_call_mode() -> None:
    apps: list = []
    async with gateway_client(
        with_remote(config(old=f"{FIX}:old_component")), app_out=apps
    ) as client:
        wrong = QueueMessage(type="old", action=ActionTypes.COMPLETED_TASK, data={})
        refused = await client.post(
            "/services/old/process_message", content=wrong.model_dump_json(), headers=SERVICE_AUTH
        )
        assert refused.status_code == 422

        bus = apps[0].state.runtime.bus
        send, receive = anyio.create_memory_object_stream[QueueMessage](1)
        bus.register_consumer(Consumer(message_type="agent-x", handler=send.send, id_="agent-x"))
        call = QueueMessage(
            type="old",
            action=ActionTypes.NEW_TOOL_CALL,
            data=TaskDefinition(task_id="call-1", input="plain text").model_dump(),
            publisher_id="agent-x",
        )
        # Delivered like a remote service would be: through /process_message.
        delivered = await client.post(
            "/services/old/process_message", content=call.model_dump_json(), headers=SERVICE_AUTH
        )
        assert delivered.status_code == 200
        with anyio.fail_after(5):
            reply = ToolCallResult.model_validate((await receive.receive()).data)
        assert (reply.id_, reply.is_error) == ("call-1", False)
        assert json.loads(reply.result) == {"output": "PLAIN TEXT"}


def test_a_non_component_is_refused_at_start_up() -> None:
    parsed = parse_config(config(bad=f"{FIX}:not_a_component"), "gateway.yaml")
    with pytest.raises(ConfigError) as error:
        build_services(parsed)
    assert "service 'bad': component:" in str(error.value)
    assert "got int" in str(error.value)
