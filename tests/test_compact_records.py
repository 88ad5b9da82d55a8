"""Compact task records and event entries: same JSON, same checks, a fraction of the bytes."""

from __future__ import annotations

import json
import sys

import pytest
from pydantic import ValidationError

from gateway.control_plane.events import TaskEventHub
from gateway.control_plane.tasks import TaskRecord
from gateway.messages import ChatMessage, TaskEvent, TaskResult, TaskStatus


def test_task_record_keeps_the_model_api_and_its_checks() -> None:
    record = TaskRecord(task_id="t-1", service="echo", input={"message": "hi"})
    record.status = TaskStatus.COMPLETED
    record.result = TaskResult(task_id="t-1", result="hi")
    again = TaskRecord.model_validate_json(record.model_dump_json())
    assert again == record and isinstance(again.result, TaskResult)
    assert TaskRecord.model_validate(record.model_dump(mode="json")) == record
    assert record.model_dump(include={"status"}) == {"status": TaskStatus.COMPLETED}
    copy = record.model_copy(update={"error": "x"})
    assert copy.error == "x" and record.error is None
    with pytest.raises(ValidationError):
        TaskRecord(task_id=1, service="echo")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        TaskRecord.model_validate({"task_id": "t", "service": "s", "status": "nonsense"})
    assert not hasattr(record, "__dict__")  # slotted: ~130 bytes, not a model's ~1.3 KB
    assert sys.getsizeof(record) < 200


def test_status_entries_are_written_when_read_exactly_as_they_were_published() -> None:
    hub = TaskEventHub(replay_size=4)
    published = [
        TaskEvent(task_id="t", kind="status", status=TaskStatus.PENDING),
        TaskEvent(task_id="t", kind="event", name="Progress", data={"n": 1}),
        TaskEvent(task_id="t", kind="status", status=TaskStatus.RUNNING),
        TaskEvent(task_id="t", kind="status", name="named", status=TaskStatus.RUNNING),
    ]
    expected = []
    for event in published:
        hub.publish(event)
        expected.append(event.model_dump_json())  # with its seq, as SSE would write it
    entries = hub._channels["t"].after(0)
    assert [raw for _, _, raw in entries] == expected
    assert [kind for _, kind, _ in entries] == ["status", "event", "status", "status"]
    assert [seq for seq, _, _ in entries] == [1, 2, 3, 4]
    # Past the bound the oldest go, whatever form they are held in.
    hub.publish(TaskEvent(task_id="t", kind="status", status=TaskStatus.COMPLETED))
    assert [seq for seq, _, _ in hub._channels["t"].after(0)] == [2, 3, 4, 5]
    assert json.loads(hub._channels["t"].after(4)[0][2])["status"] == "completed"


def _records() -> list[TaskRecord]:
    history = [ChatMessage(role="user", content="hé"), ChatMessage(role="assistant", content=None)]
    done = TaskRecord(task_id="t-1", service="echo", session_id="s", input={"message": "hi"})
    done.status, done.started_at, done.finished_at = TaskStatus.COMPLETED, 2.5, 3.0
    done.result = TaskResult(
        task_id="t-1", result="text", output={"n": [1, 2.5, None, "✓"], "big": 10**30}
    )
    text_only = TaskRecord(task_id="t-2", service="agent", input="plain text")
    text_only.status = TaskStatus.COMPLETED
    text_only.result = TaskResult(task_id="t-2", result="answer", history=history)
    failed = TaskRecord(task_id="t-3", service="echo", trace_id="ab" * 16)
    failed.status, failed.error = TaskStatus.FAILED, "boom"
    failed.result = TaskResult(task_id="t-3", status=TaskStatus.FAILED, error="boom")
    stored = TaskRecord.model_validate(
        {"task_id": "t-4", "service": "echo", "status": "running", "created_at": 7}
    )
    return [done, text_only, failed, stored, TaskRecord(task_id="t-5", service="echo")]


@pytest.mark.parametrize("record", _records(), ids=lambda r: r.task_id)
def test_view_json_is_the_json_of_view(record: TaskRecord) -> None:
    assert record.view_json() == record.view().model_dump_json().encode()
    assert json.loads(record.view_json())["task_id"] == record.task_id
