"""Graceful shutdown: stop accepting, let in-flight tasks finish within `shutdown_grace`, cancel
the rest (recorded `cancelled`, durably with the sqlite store), and exit 0.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import yaml

from gateway.app import build_app
from gateway.config import parse_config
from gateway.store.sqlite import SqliteStore
from tests.conftest import ROOT, free_port, running_server
from tests.fixtures_faults import assert_error, gate, reset_gates, wait_status

GRACE = 3.0
QUICK_SECONDS = 1.5  # in flight at SIGTERM, done within the grace period
LONG_SECONDS = 120.0  # still running when the grace period ends


def shutdown_config(db_path: str) -> dict[str, Any]:
    return {
        "default_service": "quick",
        "shutdown_grace": GRACE,
        "store": {"kind": "sqlite", "path": db_path},
        "services": {
            "quick": {"type": "workflow", "source": "tests.fixtures_faults:nap"},
            "long": {
                "type": "workflow",
                "source": "tests.fixtures_faults:nap",
                "max_concurrent_tasks": 2,
            },
        },
    }


def submit(client: httpx.Client, service: str, seconds: float) -> str:
    response = client.post(
        "/control_plane/tasks", json={"service": service, "input": {"seconds": seconds}}
    )
    assert response.status_code == 202, response.text
    return response.json()["task_id"]


def wait_running(client: httpx.Client, task_ids: list[str], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    pending = set(task_ids)
    while pending:
        assert time.monotonic() < deadline, f"not running in {timeout}s: {pending}"
        for task_id in list(pending):
            if client.get(f"/control_plane/tasks/{task_id}").json()["status"] == "running":
                pending.discard(task_id)
        time.sleep(0.02)


@contextmanager
def cli_server(config: dict[str, Any], tmp_path: Path, env: dict[str, str]) -> Iterator[Any]:
    """`python -m gateway --config <file> --port <free>`: the project's own launcher."""
    config_path = tmp_path / "cli-gateway.yaml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    log_path = tmp_path / "cli-server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--config", str(config_path), "--port", str(port)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            try:
                if httpx.get(base_url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        yield process, base_url, log_path
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_sigterm_mid_load_drains_cancels_records_and_exits_0(tmp_path) -> None:
    cfg = shutdown_config(str(tmp_path / "shutdown.db"))
    env = {"GATEWAY_SECRET": "shutdown-test-secret"}
    with cli_server(cfg, tmp_path, env) as (process, base_url, log_path):
        with httpx.Client(base_url=base_url, timeout=10) as client:
            quick = [submit(client, "quick", QUICK_SECONDS) for _ in range(4)]
            long = [submit(client, "long", LONG_SECONDS) for _ in range(2)]
            waiting = submit(client, "long", 0.2)  # no free slot: accepted, never started
            wait_running(client, quick + long)
            assert client.get(f"/control_plane/tasks/{waiting}").json()["status"] == "pending"
            # the order that matters, seen in sequence: running just before SIGTERM ...
            before = [client.get(f"/control_plane/tasks/{t}").json()["status"] for t in quick]
            assert before == ["running"] * len(quick)
        sent_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(timeout=GRACE + 15)
        took = time.monotonic() - sent_at  # one clock, this process's
    log = log_path.read_text()
    assert exit_code == 0, log
    assert GRACE - 0.5 <= took < GRACE + 10, log  # the long tasks held it for the grace period
    assert "cancelled 2 task(s) at shutdown" in log, log
    assert "Application shutdown complete" in log and "Traceback" not in log, log
    # ... and between the two processes: the never-started task is still pending on disk
    with sqlite3.connect(f"file:{cfg['store']['path']}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT status FROM tasks WHERE task_id = ?", (waiting,)).fetchone()
    assert row == ("pending",)

    # A new process (uvicorn gateway.app:app) on the same database reads how every task ended.
    with (
        running_server(cfg, tmp_path, env=env) as again,
        httpx.Client(base_url=again.base_url, timeout=10) as client,
    ):
        for task_id in quick:
            record = client.get(f"/control_plane/tasks/{task_id}").json()
            assert record["status"] == "completed", record
            assert record["result"] == "rested"  # in flight at SIGTERM, drained
        for task_id in long:
            record = client.get(f"/control_plane/tasks/{task_id}").json()
            assert record["status"] == "cancelled", record
            assert record["error"] == "cancelled at shutdown"
        # The accepted-but-never-started task was kept, not dropped: it runs after the restart.
        record = client.get(f"/control_plane/tasks/{waiting}/result", params={"wait": 10}).json()
        assert record["status"] == "completed", record  # it ran in the second process


@asynccontextmanager
async def served(config: dict[str, Any]) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """A gateway whose lifespan the test ends itself (by setting `stop`), with a client."""
    app = build_app(parse_config(config, "test-config"))
    stop = anyio.Event()
    stopped = anyio.Event()

    async def serve(*, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        async with app.router.lifespan_context(app):
            task_status.started()
            await stop.wait()
        stopped.set()

    transport = httpx.ASGITransport(app=app)
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://gateway") as client,
        anyio.create_task_group() as group,
    ):
        await group.start(serve)
        app.state.stop, app.state.stopped = stop, stopped
        yield client, app
        stop.set()


async def wait_not_ready(client: httpx.AsyncClient) -> None:
    with anyio.fail_after(5):
        while (response := await client.get("/readyz")).status_code == 200:
            await anyio.sleep(0.01)
    body = assert_error(response, 503)
    assert body["detail"] == "not ready"
    assert response.headers["retry-after"]


@pytest.mark.anyio
async def test_readyz_is_503_and_new_tasks_refused_once_shutdown_begins() -> None:
    reset_gates()
    cfg = {
        "default_service": "gated",
        "shutdown_grace": 10,
        "services": {"gated": {"type": "workflow", "source": "tests.fixtures_faults:gated"}},
    }
    async with served(cfg) as (client, app):
        assert (await client.get("/readyz")).json() == {"status": "ready"}
        response = await client.post("/control_plane/tasks", json={"input": {"n": 1}})
        task_id = response.json()["task_id"]
        await wait_status(client, task_id, "running")

        app.state.stop.set()  # the lifespan begins its shutdown while the task is in flight
        await wait_not_ready(client)
        refused = await client.post("/control_plane/tasks", json={"input": {"n": 2}})
        assert_error(refused, 503)
        assert "shutting down" in refused.json()["detail"]
        assert refused.headers["retry-after"]
        assert (await client.get("/healthz")).status_code == 200  # alive, just not ready
        assert not app.state.stopped.is_set()  # still draining: the task has not ended

        gate("main").opened.set()
        with anyio.fail_after(5):
            await app.state.stopped.wait()
        record = app.state.runtime.control_plane.task(task_id)
        assert record.status.value == "completed"
        assert record.result.data == {"result": {"n": 1}}


@pytest.mark.anyio
async def test_tasks_past_the_grace_period_are_cancelled_and_recorded(tmp_path) -> None:
    reset_gates()
    db_path = tmp_path / "grace.db"
    cfg = {
        "default_service": "gated",
        "shutdown_grace": 0.2,
        "store": {"kind": "sqlite", "path": str(db_path)},
        "services": {"gated": {"type": "workflow", "source": "tests.fixtures_faults:gated"}},
    }
    async with served(cfg) as (client, app):
        ids = []
        for n in range(3):
            response = await client.post("/control_plane/tasks", json={"input": {"n": n}})
            ids.append(response.json()["task_id"])
        with anyio.fail_after(5):
            await gate("main").reached(3).wait()
        app.state.stop.set()
        with anyio.fail_after(5):
            await app.state.stopped.wait()
    assert gate("main").cancelled == 3  # the runs themselves were stopped, not just relabelled

    store = SqliteStore(db_path)
    async with anyio.create_task_group() as group:
        await store.open(group)
        for task_id in ids:
            record = store.load_task(task_id)
            assert record is not None and record.status.value == "cancelled"
            assert record.error == "cancelled at shutdown"
        assert store.unfinished_tasks() == []
        await store.close()
