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
from pathlib import Path

from bench.common import Load, Row, answer_has, run_and_print, run_load, serve_gateway

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


def _load(url: str, requests: int) -> Load:
    return run_load(url, PAYLOAD, answer_has("result", "ping"), CONCURRENCY, requests)


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
            best: dict[str, Load] = {}
            for base in urls.values():
                _load(base + "/services/echo/run", WARMUP)
            for _ in range(ROUNDS):
                for name, base in urls.items():
                    load = _load(base + "/services/echo/run", REQUESTS)
                    if name not in best or load.elapsed < best[name].elapsed:
                        best[name] = load
        # every task went through the file (the server flushed it on shutdown)
        written = _rows_count(folder / "bench.db")
        expected = WARMUP + ROUNDS * REQUESTS
        if written != expected:
            raise RuntimeError(f"sqlite holds {written} completed tasks, expected {expected}")

    mem, sql = best["memory"], best["sqlite"]
    c = f"c={CONCURRENCY}"
    return [
        Row(f"run {c} throughput, sqlite vs memory", sql.rps, mem.rps, "req/s", ">= 0.7x"),
        Row(f"run {c} p50, sqlite vs memory", sql.latency_ms(50), mem.latency_ms(50), "ms", "",
            False),
        Row(f"run {c} p99, sqlite vs memory", sql.latency_ms(99), mem.latency_ms(99), "ms", "",
            False),
    ]  # fmt: skip


def main() -> None:
    run_and_print("store: task round trip with sqlite (value) vs memory (baseline)", run)


if __name__ == "__main__":
    main()
