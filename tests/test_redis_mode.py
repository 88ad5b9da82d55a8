"""Redis mode in one process: start-up errors, the atomic scripts, back-pressure, take-over.

The multi-process behaviour is in test_redis_scaleout.py. A missing Redis fails these tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
import redis
import redis.asyncio
import yaml

from gateway.__main__ import main
from gateway.config import ConfigError, parse_config
from gateway.control_plane.tasks import TaskRecord
from gateway.messages import (
    ActionTypes,
    NewTask,
    QueueMessage,
    TaskDefinition,
    TaskEvent,
    TaskStatus,
)
from gateway.store import TaskFilter
from gateway.store.redis import RedisStore, SubmitRefused
from tests.conftest import free_port, gateway_client
from tests.fixtures_sessions import parse_sse
from tests.redis_helpers import REDIS_URL, SECRET, clean_namespace, redis_config

pytestmark = pytest.mark.anyio

SLOW = {"type": "workflow", "source": "tests.fixtures_workflows:slow", "max_concurrent_tasks": 1}
ECHO = {"type": "workflow", "source": "examples.echo:workflow"}


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_SECRET", SECRET)
    # `main` would reconfigure logging for the whole test session
    monkeypatch.setattr("gateway.__main__.configure_logging", lambda level: None)


# -- start-up ------------------------------------------------------------------------------------
def _write(tmp_path: Path, config: dict) -> str:
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_unreachable_redis_is_one_line_and_a_non_zero_exit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    path = _write(tmp_path, redis_config("unreachable", {"echo": ECHO}, url=url))
    assert main(["--config", path]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "bus.url" in err and "cannot reach Redis" in err and url in err


def test_redis_mode_without_the_shared_secret_is_a_start_up_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GATEWAY_SECRET")
    path = _write(tmp_path, redis_config("nosecret", {"echo": ECHO}))
    assert main(["--config", path]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "GATEWAY_SECRET" in err, err


def test_bus_and_store_must_both_be_redis() -> None:
    with pytest.raises(ConfigError, match="go together"):
        parse_config({"bus": {"kind": "redis"}, "store": {"kind": "sqlite"}})
    with pytest.raises(ConfigError, match="go together"):
        parse_config({"store": {"kind": "redis"}})


def test_services_subset_names_must_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, redis_config("subset", {"echo": ECHO}))
    assert main(["--config", path, "--services", "echo,nope"]) != 0
    assert "nope" in capsys.readouterr().err


# -- the scripts ---------------------------------------------------------------------------------
def _task(store: RedisStore, service: str = "echo") -> tuple[TaskRecord, QueueMessage]:
    task = TaskDefinition(input="{}", agent_id=service)
    record = TaskRecord(task_id=task.task_id, service=service, input=task.input)
    message = QueueMessage(
        type=service, action=ActionTypes.NEW_TASK, data=NewTask(task=task).model_dump(mode="json")
    )
    return record, message


async def test_first_terminal_state_wins_and_the_backlog_is_bounded() -> None:
    with clean_namespace() as namespace:
        client = redis.asyncio.Redis.from_url(REDIS_URL, decode_responses=True)
        store = RedisStore(client, namespace)
        pending = TaskEvent(task_id="x", kind="status", status=TaskStatus.PENDING)
        records = []
        for _ in range(2):
            record, message = _task(store)
            assert (await store.submit(record, message, 2, pending)).outcome == "ok"
            records.append(record)
        with pytest.raises(SubmitRefused) as refused:
            await store.submit(*_task(store), 2, pending)
        assert refused.value.reason == "full"  # two entries wait in the stream: max reached
        with pytest.raises(SubmitRefused) as taken:
            await store.submit(records[0], _task(store)[1], 10, pending)
        assert taken.value.reason == "exists"

        first = records[0].task_id
        ended = await store.finish(first, TaskStatus.COMPLETED, None, None, 1.0)
        again = await store.finish(first, TaskStatus.FAILED, None, "duplicate", 2.0)
        assert ended is not None and ended.status is TaskStatus.COMPLETED and again is None
        record = await store.fetch_task(first)
        assert record is not None and record.status is TaskStatus.COMPLETED
        assert await client.xlen(f"gw:{namespace}:stream:echo") == 1  # its entry is gone
        kinds = [json.loads(f["e"])["kind"] for _, f in await client.xrange(store.key("ev", first))]
        assert kinds == ["status", "result"]
        await client.aclose()


# -- in one gateway --------------------------------------------------------------------------------
async def test_backlog_refusal_cancel_and_events_in_redis_mode() -> None:
    with clean_namespace() as namespace:
        config = redis_config(namespace, {"slow": {**SLOW, "max_queued_tasks": 3}, "echo": ECHO})
        async with gateway_client(config) as client:
            ids = []
            for _ in range(3):
                response = await client.post(
                    "/control_plane/tasks", json={"service": "slow", "input": {"seconds": 30}}
                )
                assert response.status_code == 202, response.text
                ids.append(response.json()["task_id"])
            full = await client.post("/control_plane/tasks", json={"service": "slow"})
            assert full.status_code == 503 and full.headers["Retry-After"] == "1", full.text
            for task_id in ids:
                cancelled = await client.post(f"/control_plane/tasks/{task_id}/cancel")
                assert cancelled.json()["status"] == "cancelled", cancelled.text
                again = await client.post(f"/control_plane/tasks/{task_id}/cancel")
                assert again.status_code == 409
            ran = await client.post("/services/echo/run", json={"kwargs": {"message": "hi"}})
            task_id = ran.json()["task_id"]
            events = await client.get(f"/control_plane/tasks/{task_id}/events")
            kinds = [line[7:] for line in events.text.splitlines() if line.startswith("event: ")]
            assert kinds[0] == "status" and kinds[-1] == "result", events.text
            ids = [int(line[4:]) for line in events.text.splitlines() if line.startswith("id: ")]
            assert ids == list(range(1, len(ids) + 1))
            resumed = await client.get(
                f"/control_plane/tasks/{task_id}/events", headers={"Last-Event-ID": "1"}
            )
            again = [int(line[4:]) for line in resumed.text.splitlines() if line.startswith("id: ")]
            assert again == ids[1:]
            assert (await client.get("/control_plane/tasks/nope")).status_code == 404


async def test_a_task_delivered_too_often_is_given_up_and_dead_lettered() -> None:
    with clean_namespace() as namespace:
        client = redis.asyncio.Redis.from_url(REDIS_URL, decode_responses=True)
        store = RedisStore(client, namespace)
        record, message = _task(store)
        pending = TaskEvent(task_id=record.task_id, kind="status", status=TaskStatus.PENDING)
        await store.submit(record, message, 10, pending)
        stream = store.key("stream", "echo")
        # A replica that took it and died, after it had been delivered 3 times already.
        await client.xgroup_create(stream, "workers", id="0")
        [[_, [(entry_id, _)]]] = await client.xreadgroup("workers", "ghost", {stream: ">"})
        await client.xclaim(stream, "workers", "ghost", 0, [entry_id], retrycount=3)
        config = redis_config(namespace, {"echo": ECHO}, claim_idle=0.3, max_deliveries=3)
        async with gateway_client(config) as gateway:
            with anyio.fail_after(10):
                result = await gateway.get(f"/control_plane/tasks/{record.task_id}/result?wait=9")
            assert result.json()["status"] == "failed"
            assert result.json()["error"] == "gave up after 3 deliveries"
        dead = await client.xrange(store.key("dead", "echo"))
        assert [f["entry"] for _, f in dead] == [entry_id]
        assert await client.xlen(stream) == 0
        await client.aclose()


async def test_finished_tasks_past_retention_leave_the_lists_with_their_records() -> None:
    with clean_namespace() as namespace:
        client = redis.asyncio.Redis.from_url(REDIS_URL, decode_responses=True)
        store = RedisStore(client, namespace)
        pending = TaskEvent(task_id="x", kind="status", status=TaskStatus.PENDING)
        old, message = _task(store)
        await store.submit(old, message, 100, pending)
        await store.finish(old.task_id, TaskStatus.COMPLETED, None, None, 1.0)  # long ago
        for _ in range(8):  # a retention batch runs about every 8 submissions
            await store.submit(*_task(store), 100, pending)
        assert await store.fetch_task(old.task_id) is None
        assert not await client.exists(store.key("ev", old.task_id))
        records, total = await store.list_tasks(TaskFilter(service="echo", limit=100))
        assert total == 8 and old.task_id not in {r.task_id for r in records}
        for index in ("created", "started", "finished", "st:completed", "svc:echo"):
            assert await client.zscore(store.key("tix", index), old.task_id) is None, index
        await client.aclose()


async def test_a_result_event_has_the_fields_it_has_in_one_process() -> None:
    # The finish script's result event embedded the whole TaskResult as `result` (history,
    # data, output...), where one process (and the clients, which take `data.result` as the
    # output) has the task's result: a client following a task got a dict instead of "hi".
    async def ended(config: dict) -> tuple[dict, dict]:
        async with gateway_client(config) as client:
            ran = await client.post("/services/echo/run", json={"kwargs": {"message": "hi"}})
            task = ran.json()
            events = await client.get(f"/control_plane/tasks/{task['task_id']}/events")
            frames = parse_sse(events.text.splitlines())
            return task, [data for kind, data in frames if kind == "result"][0]

    with clean_namespace() as namespace:
        task, shared = await ended(redis_config(namespace, {"echo": ECHO}))
    _, local = await ended({"services": {"echo": ECHO}})
    assert shared["data"] == local["data"] == {"result": "hi", "error": None, "status": "completed"}
    assert shared["at"] == task["finished_at"]
