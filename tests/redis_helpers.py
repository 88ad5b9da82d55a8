"""Helpers for the Redis-mode tests: a clean namespace per test, replica processes, a private
redis-server. A missing Redis is a failure, never a skip (CI starts one, see `.ci/run`)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import redis
import yaml

from tests.conftest import ROOT, free_port

REDIS_URL = "redis://127.0.0.1:6379/0"
SECRET = "test-secret-shared-by-replicas"


def redis_config(
    namespace: str, services: dict[str, Any], url: str = REDIS_URL, **bus: Any
) -> dict:
    return {
        "name": "scaleout-test",
        "shutdown_grace": 2,
        "bus": {"kind": "redis", "url": url, "namespace": namespace, **bus},
        "store": {"kind": "redis"},
        "services": services,
    }


@contextmanager
def clean_namespace(url: str = REDIS_URL) -> Iterator[str]:
    """A namespace nobody else uses; its keys are deleted afterwards."""
    client = redis.Redis.from_url(url, decode_responses=True)
    client.ping()  # no Redis: this test fails here (CI must provide one)
    namespace = f"t{uuid4().hex[:12]}"
    try:
        yield namespace
    finally:
        keys = list(client.scan_iter(match=f"gw:{namespace}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
        client.close()


class Replica:
    def __init__(self, process: subprocess.Popen, url: str, log: Path) -> None:
        self.process = process
        self.url = url
        self.log_path = log

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_replica(
    config: dict, tmp_path: Path, services: str | None = None, env: dict | None = None
) -> Replica:
    """`python -m gateway --config ... --port ... [--services ...]` as a subprocess."""
    port = free_port()
    config_path = tmp_path / f"deploy-{port}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log = tmp_path / f"replica-{port}.log"
    command = [sys.executable, "-m", "gateway", "--config", str(config_path), "--port", str(port)]
    if services:
        command += ["--services", services]
    process_env = {**os.environ, "PYTHONPATH": str(ROOT), "GATEWAY_SECRET": SECRET, **(env or {})}
    with log.open("w") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=process_env, stdout=out, stderr=subprocess.STDOUT
        )
    return Replica(process, f"http://127.0.0.1:{port}", log)


def wait_ready(replica: Replica, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if replica.process.poll() is not None:
            raise RuntimeError(f"replica exited early:\n{replica.log()}")
        try:
            if httpx.get(f"{replica.url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"replica not ready after {timeout}s:\n{replica.log()}")


def stop(replica: Replica) -> None:
    if replica.process.poll() is None:
        replica.process.send_signal(signal.SIGTERM)
        try:
            replica.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            replica.process.kill()
            replica.process.wait()


@contextmanager
def replicas(config: dict, tmp_path: Path, *services: str | None) -> Iterator[list[Replica]]:
    """Start one replica per entry of `services` (None = all), wait until all are ready."""
    started = [start_replica(config, tmp_path, s) for s in services]
    try:
        for replica in started:
            wait_ready(replica)
        yield started
    finally:
        for replica in started:
            stop(replica)


class PrivateRedis:
    """A redis-server of our own on a free port, with an append-only file so a restart keeps
    what was acknowledged (the point of the restart test)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (CI installs it, see .ci/run)"
        self.process = subprocess.Popen(
            [
                binary,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--dir", str(self.folder),
                "--save", "",
                "--appendonly", "yes",
                "--appendfsync", "always",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # redis-server flushes the AOF and exits
            self.process.wait(timeout=10)
        self.process = None
