"""The wire contracts: every model survives a JSON round trip, enums have their wire values."""

from __future__ import annotations

import json
import uuid

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from gateway.messages import (
    TERMINAL_STATUSES,
    ActionTypes,
    ChatMessage,
    HumanResponse,
    NewTask,
    QueueMessage,
    QueueMessageStats,
    ServiceDefinition,
    SessionDefinition,
    TaskDefinition,
    TaskEvent,
    TaskResult,
    TaskStatus,
    ToolCall,
    ToolCallBundle,
    ToolCallResult,
    WorkflowState,
    fresh_stats,
    new_id,
    trusted,
)

TASK = TaskDefinition(input='{"message": "hi"}', session_id="s-1", agent_id="echo")
CHAT = ChatMessage(role="assistant", content="done", additional_kwargs={"tool_call_id": "t1"})
BUNDLE = ToolCallBundle(tool_name="add", tool_args=[1, 2.5], tool_kwargs={"x": {"y": [1, None]}})

SAMPLES: list[BaseModel] = [
    QueueMessageStats(publish_time=1.5, process_start_time=2.0, process_end_time=None),
    QueueMessage(
        publisher_id="svc",
        type="echo",
        action=ActionTypes.NEW_TASK,
        data=NewTask(task=TASK, state={"k": 1}).model_dump(mode="json"),
        stats=QueueMessageStats(publish_time=3.25),
    ),
    QueueMessage(),  # every default, including action=None
    CHAT,
    ChatMessage(content=None),
    TASK,
    TaskResult(
        task_id="t",
        history=[CHAT],
        result="ok",
        data={"result": {"nested": [1, 2]}},
        status=TaskStatus.FAILED,
        error="ValueError: bad",
    ),
    NewTask(task=TASK, state={"a": [1, {"b": None}]}),
    ServiceDefinition(
        service_name="echo",
        description="d",
        prompt=[{"role": "system", "content": "x"}],
        host="127.0.0.1",
        port=8001,
        type="workflow",
        prefix="/services/echo",
        endpoints=["GET /services/echo/", "POST /services/echo/run"],
        remote=True,
    ),
    BUNDLE,
    ToolCall(tool_call_bundle=BUNDLE, source_id="agent-1"),
    ToolCallResult(id_="c1", tool_message=CHAT, result="3.5", is_error=True),
    HumanResponse(result="yes"),
    SessionDefinition(task_ids=["a", "b"], state={"count": 2}),
    WorkflowState(hash="ab" * 32, state='{"x": 1}', run_kwargs={"m": "hi"}, session_id="s"),
    TaskEvent(
        task_id="t", kind="status", name="n", data={"d": 1.5}, status=TaskStatus.WAITING_FOR_HUMAN
    ),
]


@pytest.mark.parametrize("model", SAMPLES, ids=lambda m: type(m).__name__)
def test_json_round_trip(model: BaseModel) -> None:
    text = model.model_dump_json()
    json.loads(text)  # real JSON, nothing pickled
    again = type(model).model_validate_json(text)
    assert again == model
    assert again.model_dump_json() == text


def test_queue_message_action_is_its_wire_value() -> None:
    message = QueueMessage(type="echo", action=ActionTypes.COMPLETED_TASK)
    raw = json.loads(message.model_dump_json())
    assert raw["action"] == "completed_task"
    assert QueueMessage.model_validate(raw).action is ActionTypes.COMPLETED_TASK


def test_action_type_values() -> None:
    assert {a.value for a in ActionTypes} == {
        "new_task",
        "completed_task",
        "new_tool_call",
        "completed_tool_call",
        "request_for_help",
        "send_event",
        "task_stream",
        "cancel_task",
    }


def test_task_status_values_and_terminality() -> None:
    assert [s.value for s in TaskStatus] == [
        "pending",
        "running",
        "waiting_for_human",
        "waiting_for_input",
        "completed",
        "failed",
        "cancelled",
        "timed_out",
    ]
    terminal = {s for s in TaskStatus if s.is_terminal}
    assert terminal == set(TERMINAL_STATUSES)
    assert terminal == {
        TaskStatus.COMPLETED,
        TaskStatus.FAILED,
        TaskStatus.CANCELLED,
        TaskStatus.TIMED_OUT,
    }
    assert not TaskStatus("waiting_for_human").is_terminal


def test_ids_are_unique_by_default() -> None:
    assert TaskDefinition().task_id != TaskDefinition().task_id
    assert QueueMessage().id_ != QueueMessage().id_


def test_invalid_contracts_are_rejected() -> None:
    with pytest.raises(ValidationError):
        QueueMessage.model_validate({"action": "explode"})
    with pytest.raises(ValidationError):
        TaskResult.model_validate({"task_id": "t", "status": "done-ish"})
    with pytest.raises(ValidationError):
        ServiceDefinition.model_validate({"service_name": ""})
    with pytest.raises(ValidationError):
        ServiceDefinition.model_validate({"service_name": "x", "port": 70000})


def test_service_definition_ignores_unknown_fields_from_older_peers() -> None:
    definition = ServiceDefinition.model_validate({"service_name": "x", "legacy": 1})
    assert definition.service_name == "x"
    assert "legacy" not in definition.model_dump()


def test_a_carrying_message_hands_over_its_body_and_makes_data_only_when_read() -> None:
    result = TaskResult(task_id="t-1", result="ok", output={"n": 1})
    message = QueueMessage.carrying(
        result, type="control_plane", action=ActionTypes.COMPLETED_TASK, publisher_id="echo"
    )
    # in the process: the very object, no JSON made
    assert message.body_as(TaskResult) is result
    assert "data" not in message.__dict__
    # leaving the process: the same wire shape as a message built from a dict
    wire = json.loads(message.model_dump_json())
    assert wire["data"] == result.model_dump(mode="json")
    assert wire["action"] == "completed_task" and wire["publisher_id"] == "echo"
    assert message.data == result.model_dump(mode="json")
    # and what comes back in is validated, as anything from outside
    back = QueueMessage.model_validate(wire)
    assert back.body_as(TaskResult) == result and back.body_as(TaskResult) is not result
    forged = QueueMessage.model_validate({**wire, "data": {"task_id": 5, "status": "nope"}})
    with pytest.raises(ValidationError):
        forged.body_as(TaskResult)


def test_a_carrying_message_of_another_model_is_validated_as_the_asked_one() -> None:
    message = QueueMessage.carrying(TaskEvent(task_id="t-1"), type="x")
    with pytest.raises(ValidationError):  # a TaskEvent's fields are not a TaskResult
        message.body_as(NewTask)
    assert message.model_copy().data["task_id"] == "t-1"


def test_no_way_of_writing_a_carrying_message_leaves_its_payload_out() -> None:
    # pydantic writes a model from its `__dict__`: a message part of another model (or written
    # by a TypeAdapter, or with exclude_unset) lost its not-yet-made `data` without a word
    result = TaskResult(task_id="t-1", result="ok")
    wire = result.model_dump(mode="json")

    def carrying() -> QueueMessage:
        return QueueMessage.carrying(result, type="control_plane", publisher_id="echo")

    class Batch(BaseModel):
        messages: list[QueueMessage]

    assert json.loads(Batch(messages=[carrying()]).model_dump_json())["messages"][0]["data"] == wire
    assert Batch(messages=[carrying()]).model_dump()["messages"][0]["data"] == wire
    assert json.loads(TypeAdapter(QueueMessage).dump_json(carrying()))["data"] == wire
    assert carrying().model_dump(exclude_unset=True)["data"] == wire
    assert dict(carrying())["data"] == wire
    assert "'task_id': 't-1'" in repr(carrying())


def test_a_new_data_for_a_carrying_message_is_its_payload() -> None:
    # a service forwarding a message with another payload: the receiver must get that one,
    # not the object the first publisher handed over
    original = TaskResult(task_id="t-1", result="ok")
    message = QueueMessage.carrying(original, type="control_plane")
    changed = {"task_id": "t-1", "result": "changed"}
    assert message.model_copy(update={"data": changed}).body_as(TaskResult).result == "changed"
    assert message.model_copy(update={"type": "x"}).body_as(TaskResult) is original
    assert message.body_as(TaskResult) is original  # the copy did not change the original
    message.data = changed
    assert message.body_as(TaskResult).result == "changed"


def test_every_pydantic_the_project_allows_leaves_an_absent_envelope_out() -> None:
    # TaskEvent.envelope is left out when absent by Field(exclude_if=...), new in pydantic
    # 2.12. The pin allowed 2.11, which takes exclude_if as an unknown extra (a deprecation
    # warning): every event then carried "envelope": null, and TaskEvent's JSON schema could
    # not be made (PydanticSerializationError on the function). Checked on 2.11.10.
    import tomllib

    import pydantic
    from packaging.requirements import Requirement

    from tests.conftest import ROOT

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = [Requirement(d) for d in project["project"]["dependencies"]]
    pin = next(r for r in pins if r.name == "pydantic")
    assert not pin.specifier.contains("2.11.10"), pin
    assert pin.specifier.contains(pydantic.VERSION), pin
    assert "envelope" not in json.loads(TaskEvent(task_id="t").model_dump_json())


def test_new_id_is_a_random_uuid4_in_its_usual_text_form() -> None:
    ids = {new_id() for _ in range(2000)}
    assert len(ids) == 2000
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert str(parsed) == text
    # every hex digit turns up in every random position (the version digit stays 4)
    for position in (0, 9, 15, 20, 35):
        assert len({text[position] for text in ids}) == 16
    assert {text[14] for text in ids} == {"4"} and {text[19] for text in ids} == set("89ab")


def _same_model(built: BaseModel, expected: BaseModel) -> None:
    assert built == expected
    assert built.model_fields_set == expected.model_fields_set
    assert built.model_dump() == expected.model_dump()
    assert built.model_dump_json() == expected.model_dump_json()
    assert built.model_dump(exclude_unset=True) == expected.model_dump(exclude_unset=True)
    assert set(type(built).model_fields) == set(built.__dict__)  # no field of the class missed


def test_trusted_models_are_the_models_the_constructor_makes() -> None:
    from llama_index.core.base.llms.types import TextBlock

    bundle = {"tool_name": "add", "tool_args": [1], "tool_kwargs": {"b": [2]}}
    _same_model(trusted(ToolCallBundle, dict(bundle)), ToolCallBundle(**bundle))
    call = trusted(
        ToolCall,
        {"id_": "c1", "tool_call_bundle": trusted(ToolCallBundle, bundle), "source_id": "s"},
    )
    _same_model(call, ToolCall(id_="c1", tool_call_bundle=ToolCallBundle(**bundle), source_id="s"))
    _same_model(fresh_stats(), QueueMessageStats())
    block = trusted(TextBlock, {"block_type": "text", "text": "x"}, {"text"})
    _same_model(block, TextBlock(text="x"))
    # What leaves the process is the same JSON, and reads back as the same call.
    message = QueueMessage.carrying(call, type="calc", action=ActionTypes.NEW_TOOL_CALL)
    wire = QueueMessage.model_validate_json(message.model_dump_json())
    assert wire.body_as(ToolCall) == call and wire.stats == QueueMessageStats()


def test_each_message_has_stats_of_its_own() -> None:
    first, second = (QueueMessage.carrying(NewTask(task=TaskDefinition())) for _ in range(2))
    first.stats.__dict__["publish_time"] = 1.0
    assert second.stats.publish_time is None
