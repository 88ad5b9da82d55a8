"""Shared pieces of the benchmarks: result rows, the summary table, latency statistics, apps
under uvicorn on free loopback ports, the httpx load generator and the modules' `main()`."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx


@dataclass
class Row:
    """One figure, its same-run baseline and the ratio (figure / baseline)."""

    name: str
    value: float
    baseline: float | None
    unit: str
    goal: str = ""
    higher_is_better: bool = True

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.value / self.baseline


def percentile(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def mean(samples: list[float]) -> float:
    return statistics.fmean(samples) if samples else float("nan")


def format_table(rows: list[Row]) -> str:
    header = ("benchmark", "value", "baseline", "ratio", "unit", "goal")
    lines = [header]
    for row in rows:
        lines.append(
            (
                row.name,
                f"{row.value:,.2f}",
                "-" if row.baseline is None else f"{row.baseline:,.2f}",
                "-" if row.ratio is None else f"{row.ratio:.2f}x",
                row.unit,
                row.goal,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def print_rows(title: str, rows: list[Row]) -> None:
    print(f"\n== {title}")
    print(format_table(rows))


# -- servers: apps under uvicorn, each in its own subprocess on a free loopback port ---------------
ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
UVICORN_ARGS = ("--log-level", "warning", "--no-access-log")
STARTUP_TIMEOUT = 30.0  # seconds for every server to answer
STOP_TIMEOUT = 15.0  # seconds for a server to exit after SIGTERM before it is killed


def free_port() -> int:
    """A TCP port free on the loopback address right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class UvicornApp:
    """One app to serve: `python -m uvicorn <*target> --host 127.0.0.1 --port <free> ...`.

    `target` is the app string, with uvicorn options such as `--factory` before it if needed;
    `env` is added to this process's environment (and PYTHONPATH=ROOT); the app counts as up once
    `ready_path` gives any HTTP answer. `name` names the log file and the errors.
    """

    name: str
    target: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    ready_path: str = "/"


def gateway_app(
    name: str, config_yaml: str, folder: Path, env: Mapping[str, str] | None = None
) -> UvicornApp:
    """`gateway.app:app` serving `config_yaml` (written to `folder/<name>.yaml`), up once
    `/healthz` answers. GATEWAY_SECRET is "bench" unless the environment or `env` sets it."""
    config = folder / f"{name}.yaml"
    config.write_text(config_yaml)
    return UvicornApp(
        name,
        ("gateway.app:app",),
        {
            "GATEWAY_SECRET": os.environ.get("GATEWAY_SECRET", "bench"),
            "GATEWAY_CONFIG": str(config),
            **(env or {}),
        },
        ready_path="/healthz",
    )


def _wait_until_up(app: UvicornApp, process: subprocess.Popen, base: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{app.name} exited early:\n{log.read_text()}")
        try:
            httpx.get(base + app.ready_path, timeout=1)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{app.name} did not start:\n{log.read_text()}") from None
            time.sleep(0.05)


@contextmanager
def serve(folder: Path, *apps: UvicornApp) -> Iterator[dict[str, str]]:
    """Start every app at once (logs in `folder/<name>.log`), yield {name: base URL} once each one
    answers, and stop them all at the end."""
    processes: list[subprocess.Popen] = []
    bases: dict[str, str] = {}
    try:
        for app in apps:
            port = free_port()
            log = folder / f"{app.name}.log"
            with log.open("w") as out:
                process = subprocess.Popen(
                    [sys.executable, "-m", "uvicorn", *app.target]
                    + ["--host", HOST, "--port", str(port), *UVICORN_ARGS],
                    cwd=ROOT,
                    env={**os.environ, "PYTHONPATH": str(ROOT), **app.env},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            processes.append(process)
            bases[app.name] = f"http://{HOST}:{port}"
        for app, process in zip(apps, processes, strict=True):
            _wait_until_up(app, process, bases[app.name], folder / f"{app.name}.log")
        yield bases
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def serve_gateway(config_yaml: str, folder: Path, name: str) -> Iterator[str]:
    """One gateway (see `gateway_app`) under uvicorn; yields its base URL."""
    with serve(folder, gateway_app(name, config_yaml, folder)) as bases:
        yield bases[name]


# -- load generator --------------------------------------------------------------------------------
@dataclass
class Load:
    """What one `run_load` measured."""

    requests: int
    elapsed: float  # seconds, first request sent to last answer read
    latencies: list[float]  # seconds, one per request

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed

    def latency_ms(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000


def answer_has(key: str, expected: Any) -> Callable[[Any], bool]:
    """A `check` for `run_load`: the JSON answer's `key` equals `expected`."""

    def check(body: Any) -> bool:
        return body[key] == expected

    return check


def run_load(
    url: str,
    payload: Any,
    check: Callable[[Any], bool],
    concurrency: int,
    requests: int,
    *,
    client_per_worker: bool = False,
) -> Load:
    """`requests` POSTs of `payload` (as JSON) to `url` by `concurrency` workers, in a fresh event
    loop (`anyio.run`).

    Every answer must be a 200 whose JSON body passes `check`, or RuntimeError. The workers share
    one httpx client with `concurrency` connections, or with `client_per_worker` each opens its own
    (its setup then counts in `elapsed`; one shared pool is itself the bottleneck at 32
    connections).
    """
    latencies: list[float] = []
    remaining = requests

    async def send(client: httpx.AsyncClient) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            response = await client.post(url, json=payload)
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200 or not check(response.json()):
                raise RuntimeError(f"bad answer from {url}: {response.text}")

    async def drive() -> float:
        async with AsyncExitStack() as stack:
            shared: httpx.AsyncClient | None = None
            if not client_per_worker:
                limits = httpx.Limits(
                    max_connections=concurrency, max_keepalive_connections=concurrency
                )
                shared = httpx.AsyncClient(limits=limits, timeout=30)
                await stack.enter_async_context(shared)

            async def worker() -> None:
                if shared is not None:
                    await send(shared)
                    return
                async with httpx.AsyncClient(timeout=30) as own:
                    await send(own)

            started = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for _ in range(concurrency):
                    tg.start_soon(worker)
            return time.perf_counter() - started

    elapsed = anyio.run(drive)
    return Load(requests, elapsed, latencies)


# -- entry point -----------------------------------------------------------------------------------
def run_and_print(title: str, run: Callable[[], list[Row]]) -> None:
    """A module's `main()`: run the benchmark, print its table and how long it took."""
    started = time.monotonic()
    rows = run()
    print_rows(title, rows)
    print(f"\n({time.monotonic() - started:.1f} s)")
