"""Shared fixtures: an in-process gateway client and a real uvicorn server on a free port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.app import build_app
from gateway.config import parse_config

ROOT = Path(__file__).resolve().parent.parent


def agent_with_calc(**agent_options: Any) -> dict[str, Any]:
    """Config `services`: the demo agent (`assistant`) with the demo tools (`calc`)."""
    agent = {"type": "agent", "source": "examples.agent:build_agent", "tools": ["calc"]}
    return {
        "calc": {"type": "tool", "source": "examples.tools:tools"},
        "assistant": {**agent, "tool_timeout": 5, **agent_options},
    }


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def gateway_client(
    config: dict[str, Any], *, app_out: list | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """Build the app from a config dict, run its lifespan, and talk to it in-process."""
    app = build_app(parse_config(config, "test-config"))
    if app_out is not None:
        app_out.append(app)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RunningServer:
    def __init__(self, process: subprocess.Popen, base_url: str, log_path: Path) -> None:
        self.process = process
        self.base_url = base_url
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def running_server(
    config: dict[str, Any],
    tmp_path: Path,
    *,
    env: dict[str, str] | None = None,
    port: int | None = None,
    startup_timeout: float = 30.0,
    preexec_fn: Callable[[], None] | None = None,
) -> Iterator[RunningServer]:
    """Start `uvicorn gateway.app:app` as a subprocess serving `config` from a temp YAML file.
    `preexec_fn` runs in the child before it starts (e.g. to set resource limits)."""
    config_path = tmp_path / f"gateway-{time.monotonic_ns()}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    port = port or free_port()
    log_path = tmp_path / f"server-{port}.log"
    process_env = {
        **os.environ,
        "GATEWAY_CONFIG": str(config_path),
        "PYTHONPATH": str(ROOT),
        **(env or {}),
    }
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "gateway.app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--app-dir",
                str(ROOT),
            ],
            cwd=ROOT,
            env=process_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,
        )
    server = RunningServer(process, f"http://127.0.0.1:{port}", log_path)
    try:
        _wait_until_healthy(server, startup_timeout)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_healthy(server: RunningServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.05
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{server.log()}")
        try:
            if httpx.get(server.base_url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
    raise RuntimeError(f"server did not become healthy in {timeout}s:\n{server.log()}")
