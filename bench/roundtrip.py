"""`POST /services/echo/run` on the gateway vs a bare Starlette endpoint awaiting the same workflow.

Both are served by uvicorn (same options, each in its own subprocess) on free loopback ports and
driven by the same httpx load generator: a warm-up, then a fixed number of requests at
concurrency 1 and 32. Prints req/s, p50 and p99 of both and the gateway/bare ratios.

The machine may be shared, so each figure is measured in ROUNDS rounds that alternate bare and
gateway; the round with the best throughput is reported for each (its p50/p99 with it).

    python -m bench.roundtrip
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx

from bench.common import Row, percentile, print_rows

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = "examples.echo:workflow"
PAYLOAD = {"kwargs": {"message": "ping"}}
# (concurrency, warm-up requests, measured requests per round)
PLAN = [(1, 150, 400), (32, 200, 600)]
ROUNDS = 3
UVICORN_ARGS = ["--log-level", "warning", "--no-access-log"]


# -- the baseline app: uvicorn bench.roundtrip:bare_app ------------------------------------------
def _build_bare_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from gateway.config import import_object

    workflow = import_object(WORKFLOW)

    async def run(request: Request) -> JSONResponse:
        body = await request.json()
        result = await workflow.run(**body.get("kwargs", {}))
        return JSONResponse({"status": "completed", "result": str(result)})

    return Starlette(routes=[Route("/run", run, methods=["POST"])])


def __getattr__(name: str) -> Any:
    if name == "bare_app":
        app = _build_bare_app()
        globals()["bare_app"] = app
        return app
    raise AttributeError(name)


# -- servers ---------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def _serve(app: str, env: dict[str, str], log: Path):
    port = _free_port()
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", app, "--port", str(port), *UVICORN_ARGS],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{app} exited early:\n{log.read_text()}")
            try:
                httpx.get(base + "/", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{app} did not start:\n{log.read_text()}") from None
                time.sleep(0.05)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- load generator --------------------------------------------------------------------------------
async def _load(url: str, concurrency: int, requests: int) -> tuple[float, list[float]]:
    """`requests` POSTs by `concurrency` workers; returns (elapsed seconds, latencies in s)."""
    latencies: list[float] = []
    remaining = requests
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                response = await client.post(url, json=PAYLOAD)
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200 or response.json()["result"] != "ping":
                    raise RuntimeError(f"bad answer from {url}: {response.text}")

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(worker)
        elapsed = time.perf_counter() - started
    return elapsed, latencies


def _measure(url: str, concurrency: int, requests: int) -> dict[str, float]:
    elapsed, latencies = anyio.run(_load, url, concurrency, requests)
    return {
        "rps": requests / elapsed,
        "p50": percentile(latencies, 50) * 1000,
        "p99": percentile(latencies, 99) * 1000,
    }


def _compare(bare: str, gateway: str, concurrency: int, warmup: int, requests: int):
    """Best-throughput round of each, measured in alternating rounds."""
    for url in (bare, gateway):
        anyio.run(_load, url, concurrency, warmup)
    rounds: dict[str, list[dict[str, float]]] = {bare: [], gateway: []}
    for n in range(ROUNDS):
        order = (bare, gateway) if n % 2 == 0 else (gateway, bare)
        for url in order:
            rounds[url].append(_measure(url, concurrency, requests))
    best = {url: max(results, key=lambda r: r["rps"]) for url, results in rounds.items()}
    return best[bare], best[gateway]


def run() -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        folder = Path(tmp)
        config = folder / "bench.yaml"
        config.write_text(
            "default_service: echo\n"
            "services:\n"
            f"  echo: {{type: workflow, source: '{WORKFLOW}', max_concurrent_tasks: 64}}\n"
        )
        gateway = stack.enter_context(
            _serve("gateway.app:app", {"GATEWAY_CONFIG": str(config)}, folder / "gateway.log")
        )
        bare = stack.enter_context(_serve("bench.roundtrip:bare_app", {}, folder / "bare.log"))
        for concurrency, warmup, requests in PLAN:
            base, gw = _compare(
                bare + "/run", gateway + "/services/echo/run", concurrency, warmup, requests
            )
            c = f"c={concurrency}"
            latency_goal = "well under 5 ms" if concurrency == 1 else ""
            rows += [
                Row(f"roundtrip {c} throughput", gw["rps"], base["rps"], "req/s", ">= 0.8x"),
                Row(f"roundtrip {c} p50", gw["p50"], base["p50"], "ms", latency_goal, False),
                Row(f"roundtrip {c} p99", gw["p99"], base["p99"], "ms", "", False),
            ]
    return rows


def main() -> None:
    started = time.monotonic()
    rows = run()
    print_rows("roundtrip: gateway (value) vs bare Starlette + same workflow (baseline)", rows)
    print(f"\n({time.monotonic() - started:.1f} s)")


if __name__ == "__main__":
    main()
