"""A store that cannot write refuses new work instead of accepting and losing it.

Faults are injected at the sqlite boundary: `FlakyStore` is the real `SqliteStore` whose batch
writes (and probe writes) raise the error a full disk gives, on demand. Proved here: a failed
commit refuses exactly the submissions waiting on it (503 + Retry-After, and the task neither
exists nor runs), `/readyz` is 503 until writes succeed again and then recovers by itself, a
metric counts failed commits, and results of tasks accepted before the failure are retried until
they are written (nothing accepted is lost).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

import gateway.app
from gateway.store.sqlite import SqliteStore
from tests.conftest import gateway_client
from tests.fixtures_sessions import config, create_session, new_probe, wait_status

pytestmark = pytest.mark.anyio

CP = "/control_plane"


class FlakyStore(SqliteStore):
    """`failing`: every write raises like a full disk; `fail_next`: only the next n do.
    `hold_next`: the next batch write blocks (in its worker thread) until `release` is set, so
    a test can line up a second batch behind it."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.failing = False
        self.fail_next = 0
        self.hold_next = False
        self.holding = threading.Event()
        self.release = threading.Event()

    def _write_batch(self, batch: dict[str, Any]) -> None:
        if self.hold_next:
            self.hold_next = False
            self.holding.set()
            self.release.wait(10)
        if self.failing or self.fail_next:
            self.fail_next = max(0, self.fail_next - 1)
            raise sqlite3.OperationalError("database or disk is full")
        super()._write_batch(batch)

    def _probe(self) -> None:
        if self.failing:
            raise sqlite3.OperationalError("database or disk is full")
        super()._probe()


@pytest.fixture
def flaky(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FlakyStore:
    store = FlakyStore(tmp_path / "flaky.db")
    monkeypatch.setattr(gateway.app, "make_store", lambda cfg: store)
    return store


def _config(db: Path) -> dict:
    return config({"gated": {"source": "gated"}}, store={"kind": "sqlite", "path": str(db)})


def _submit_body(key: str, label: str, task_id: str, **extra: Any) -> dict:
    return {"service": "gated", "task_id": task_id, "input": {"key": key, "label": label}, **extra}


async def _until_ready(client: httpx.AsyncClient, code: int = 200, timeout: float = 10) -> None:
    """Bounded polling of /readyz (the store recovers on its own: nothing here pokes it)."""
    deadline = time.monotonic() + timeout
    while (await client.get("/readyz")).status_code != code:
        assert time.monotonic() < deadline, f"/readyz did not turn {code}"
        await anyio.sleep(0.02)


def _committed_status(db: Path, task_id: str) -> str | None:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        row = conn.execute("SELECT status FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
    return row[0] if row else None


async def test_a_failed_commit_refuses_the_task_which_never_runs_and_readyz_recovers(
    flaky: FlakyStore,
) -> None:
    probe = new_probe("refused")
    async with gateway_client(_config(flaky.path)) as client:
        session_id = await create_session(client)
        assert (await client.get("/readyz")).status_code == 200
        flaky.failing = True

        refused = await client.post(
            f"{CP}/tasks", json=_submit_body("refused", "a", "task-a", session_id=session_id)
        )
        assert refused.status_code == 503, refused.text
        assert refused.headers["Retry-After"]
        assert refused.json()["error"] == "service_unavailable"
        assert "store cannot write" in refused.json()["detail"]
        assert "disk is full" in refused.json()["detail"]
        # the refused task left no trace: not in memory, not in its session, never ran
        assert (await client.get(f"{CP}/tasks/task-a")).status_code == 404
        session = (await client.get(f"{CP}/sessions/{session_id}")).json()
        assert "task-a" not in session.get("task_ids", [])
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and "store cannot write" in ready.json()["detail"]
        metrics = (await client.get("/metrics")).text
        assert "gateway_store_failed_commits_total" in metrics
        assert "gateway_store_writable 0.0" in metrics

        flaky.failing = False
        await _until_ready(client)
        assert "gateway_store_writable 1.0" in (await client.get("/metrics")).text
        # the id was never taken, so the same submission is accepted now
        accepted = await client.post(
            f"{CP}/tasks",
            json=_submit_body("refused", "a", "task-a", session_id=session_id),
        )
        assert accepted.status_code == 202, accepted.text
        assert _committed_status(flaky.path, "task-a") == "pending"
        probe.gate("a").set()
        result = await client.get(f"{CP}/tasks/task-a/result", params={"wait": 10})
        assert result.json()["status"] == "completed"
    # one run only: the refused attempt never reached the workflow
    assert probe.log == ["start:a", "end:a"]


async def test_only_the_submissions_waiting_on_the_failed_commit_are_refused(
    flaky: FlakyStore,
) -> None:
    probe = new_probe("split")
    for label in ("first", "second"):
        probe.gate(label).set()
    async with gateway_client(_config(flaky.path)) as client:
        answers: dict[str, httpx.Response] = {}

        async def post(task_id: str) -> None:
            answers[task_id] = await client.post(
                f"{CP}/tasks", json=_submit_body("split", task_id, task_id)
            )

        async with anyio.create_task_group() as tg:
            flaky.hold_next = True
            tg.start_soon(post, "first")
            # the first submission's commit is now being written (held in its thread) ...
            await anyio.to_thread.run_sync(flaky.holding.wait, 10)
            # ... so the second one lands in the next batch
            tg.start_soon(post, "second")
            await wait_status_in_memory(client, "second")
            # the first batch fails, the second (retried after the back-off) is written
            flaky.fail_next = 1
            flaky.release.set()
        assert answers["first"].status_code == 503
        assert answers["second"].status_code == 202
        assert (await client.get(f"{CP}/tasks/first")).status_code == 404
        done = await client.get(f"{CP}/tasks/second/result", params={"wait": 10})
        assert done.json()["status"] == "completed"
    assert probe.log == ["start:second", "end:second"]


async def wait_status_in_memory(client: httpx.AsyncClient, task_id: str) -> None:
    """Bounded polling until the (not yet committed) task is known to the control plane."""
    deadline = time.monotonic() + 10
    while (await client.get(f"{CP}/tasks/{task_id}")).status_code != 200:
        assert time.monotonic() < deadline
        await anyio.sleep(0.01)


async def test_results_of_accepted_tasks_are_retried_until_written(flaky: FlakyStore) -> None:
    probe = new_probe("retried")
    async with gateway_client(_config(flaky.path)) as client:
        accepted = await client.post(f"{CP}/tasks", json=_submit_body("retried", "r", "task-r"))
        assert accepted.status_code == 202
        await wait_status(client, "task-r", "running")
        flaky.failing = True
        probe.gate("r").set()
        done = await client.get(f"{CP}/tasks/task-r/result", params={"wait": 10})
        assert done.json()["status"] == "completed"
        # the result cannot be written yet: the gateway says so, and keeps it for the retry
        await _until_ready(client, 503)
        assert _committed_status(flaky.path, "task-r") != "completed"
        flaky.failing = False
        await _until_ready(client)
        deadline = time.monotonic() + 10
        while _committed_status(flaky.path, "task-r") != "completed":
            assert time.monotonic() < deadline, "the result was never written"
            await anyio.sleep(0.02)

    async with anyio.create_task_group() as tg:
        reopened = SqliteStore(flaky.path)
        await reopened.open(tg)
        record = reopened.load_task("task-r")
        assert record is not None and record.status.value == "completed"
        assert record.result is not None and record.result.result == "r"
        await reopened.close()


async def test_a_session_is_not_created_when_the_store_cannot_write(flaky: FlakyStore) -> None:
    async with gateway_client(_config(flaky.path)) as client:
        flaky.failing = True
        refused = await client.post(f"{CP}/sessions")
        assert refused.status_code == 503 and refused.headers["Retry-After"]
        assert "store cannot write" in refused.json()["detail"]
        assert (await client.get(f"{CP}/sessions")).json() == {}
        flaky.failing = False
        await _until_ready(client)
        session_id = await create_session(client)
        assert list((await client.get(f"{CP}/sessions")).json()) == [session_id]
    with closing(sqlite3.connect(f"file:{flaky.path}?mode=ro", uri=True)) as conn:
        assert conn.execute("SELECT session_id FROM sessions").fetchall() == [(session_id,)]
