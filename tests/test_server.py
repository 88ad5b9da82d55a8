"""The real thing: `uvicorn gateway.app:app` and `python -m gateway` as subprocesses on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from tests.conftest import ROOT, RunningServer, _wait_until_healthy, free_port, running_server

CONFIG = {
    "name": "server-test",
    "default_service": "echo",
    "services": {
        "echo": {"type": "workflow", "source": "examples.echo:workflow"},
        "stats": {"type": "workflow", "source": "examples.pipeline:build", "timeout": 10},
    },
}


def assert_clean_shutdown(server: RunningServer) -> None:
    """SIGTERM ran the lifespan's shutdown (uvicorn then re-raises the signal it caught)."""
    assert server.process.returncode in (0, -signal.SIGTERM), server.log()
    assert "Application shutdown complete" in server.log()


def test_uvicorn_serves_the_config(tmp_path: Path) -> None:
    with (
        running_server(CONFIG, tmp_path) as server,
        httpx.Client(base_url=server.base_url, timeout=10) as client,
    ):
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").json() == {"status": "ready"}
        info = client.get("/").json()
        assert info["name"] == "server-test" and info["default_service"] == "echo"
        assert info["services"] == {"echo": "/services/echo", "stats": "/services/stats"}

        ran = client.post("/services/echo/run", json={"kwargs": {"message": "over the wire"}})
        assert ran.status_code == 200
        assert ran.json()["status"] == "completed" and ran.json()["result"] == "over the wire"

        accepted = client.post(
            "/control_plane/tasks", json={"service": "stats", "input": {"numbers": [2, 4]}}
        )
        assert accepted.status_code == 202
        task_id = accepted.json()["task_id"]
        started = time.monotonic()
        done = client.get(f"/control_plane/tasks/{task_id}/result", params={"wait": 10})
        assert time.monotonic() - started < 5
        assert done.status_code == 200
        assert done.json()["status"] == "completed"
        assert done.json()["result"]["mean"] == 3.0

        failed = client.post("/services/stats/run", json={"kwargs": {"numbers": ["x"]}})
        assert failed.json()["status"] == "failed" and "not numbers" in failed.json()["error"]

        bad = client.post(
            "/services/echo/run", content=b"{oops", headers={"content-type": "application/json"}
        )
        assert bad.status_code == 400 and bad.json()["error"] == "bad_request"

        services = client.get("/control_plane/services").json()
        assert set(services) == {"echo", "stats"}
    assert_clean_shutdown(server)


def test_python_m_gateway_serves(tmp_path: Path) -> None:
    config_path = tmp_path / "cli.yaml"
    config_path.write_text(yaml.safe_dump(CONFIG))
    port = free_port()
    log_path = tmp_path / "cli.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--config", str(config_path), "--port", str(port)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = RunningServer(process, f"http://127.0.0.1:{port}", log_path)
    try:
        _wait_until_healthy(server, 30)
        response = httpx.post(
            f"{server.base_url}/services/echo/run", json={"kwargs": {"message": "cli"}}, timeout=10
        )
        assert response.json()["result"] == "cli"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
    assert_clean_shutdown(server)


def test_python_m_gateway_with_a_bad_config_exits_with_one_line(tmp_path: Path) -> None:
    config_path = tmp_path / "bad.yaml"
    config_path.write_text(
        yaml.safe_dump({"services": {"echo": {"type": "workflow", "source": "nowhere:wf"}}})
    )
    completed = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(config_path), "--port", str(free_port())],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert completed.returncode != 0
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert lines == [
        f"error: {config_path}: service 'echo': cannot import module 'nowhere': "
        "No module named 'nowhere'"
    ], completed.stderr

    missing = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(tmp_path / "absent.yaml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert missing.returncode != 0
    assert missing.stderr.strip() == f"error: {tmp_path / 'absent.yaml'}: config file not found"
