"""The cost of the durable store on a task round trip: `store: sqlite` vs `store: memory`.

Two gateways with the same echo workflow service, one writing tasks through the SQLite store (a
submitted task is committed before it is acknowledged), one keeping them in memory, each under
uvicorn on a free loopback port. The same httpx load generator drives `POST /services/echo/run`
at concurrency 8 against both, alternating rounds so that noise hits both alike; the best round
of each is reported. Goal: sqlite >= 0.7x memory.

    python -m bench.store
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import anyio
import httpx

from bench.common import Row, percentile, print_rows
from bench.events import serve_gateway

CONCURRENCY = 8
WARMUP = 150
REQUESTS = 400
ROUNDS = 5
PAYLOAD = {"kwargs": {"message": "ping"}}


def _config(store: str, folder: Path) -> str:
    path = folder / "bench.db"
    store_line = f"store: {{kind: sqlite, path: '{path}'}}\n" if store == "sqlite" else ""
    return (
        store_line + "services:\n"
        "  echo: {type: workflow, source: 'examples.echo:workflow', max_concurrent_tasks: 64}\n"
    )


async def _load(url: str, requests: int) -> tuple[float, list[float]]:
    """`requests` POSTs by CONCURRENCY workers; returns (elapsed seconds, latencies)."""
    latencies: list[float] = []
    remaining = requests
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
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
            for _ in range(CONCURRENCY):
                tg.start_soon(worker)
        return time.perf_counter() - started, latencies


def _rows_count(db: Path) -> int:
    import sqlite3

    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT count(*) FROM tasks WHERE status = 'completed'").fetchone()[0]


def run() -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with (
            serve_gateway(_config("memory", folder), folder, "memory") as memory,
            serve_gateway(_config("sqlite", folder), folder, "sqlite") as sqlite,
        ):
            urls = {"memory": memory, "sqlite": sqlite}
            best: dict[str, tuple[float, list[float]]] = {}
            for base in urls.values():
                anyio.run(_load, base + "/services/echo/run", WARMUP)
            for _ in range(ROUNDS):
                for name, base in urls.items():
                    elapsed, latencies = anyio.run(_load, base + "/services/echo/run", REQUESTS)
                    if name not in best or elapsed < best[name][0]:
                        best[name] = (elapsed, latencies)
        # every task went through the file (the server flushed it on shutdown)
        written = _rows_count(folder / "bench.db")
        expected = WARMUP + ROUNDS * REQUESTS
        if written != expected:
            raise RuntimeError(f"sqlite holds {written} completed tasks, expected {expected}")

    mem_s, mem_lat = best["memory"]
    sql_s, sql_lat = best["sqlite"]
    c = f"c={CONCURRENCY}"
    return [
        Row(f"run {c} throughput, sqlite vs memory", REQUESTS / sql_s, REQUESTS / mem_s, "req/s",
            ">= 0.7x"),
        Row(f"run {c} p50, sqlite vs memory", percentile(sql_lat, 50) * 1000,
            percentile(mem_lat, 50) * 1000, "ms", "", False),
        Row(f"run {c} p99, sqlite vs memory", percentile(sql_lat, 99) * 1000,
            percentile(mem_lat, 99) * 1000, "ms", "", False),
    ]  # fmt: skip


def main() -> None:
    started = time.monotonic()
    rows = run()
    print_rows("store: task round trip with sqlite (value) vs memory (baseline)", rows)
    print(f"\n({time.monotonic() - started:.1f} s)")


if __name__ == "__main__":
    main()
