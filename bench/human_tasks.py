"""10,000 outstanding human tasks: what they cost in memory and whether anything slows down.

Two ways the tasks arrive, each in a fresh gateway: as tool calls (how a workflow's
InputRequiredEvent asks; the human service's own queue only) and as control-plane tasks (each one
also a tracked task with status and event replay). Baselines come from the same gateway with an
empty queue: `GET /tasks?limit=50` (first and last page) and another service's `POST /run`. Memory
is the heap growth (tracemalloc) and the RSS growth of holding the tasks.

    python -m bench.human_tasks
"""

from __future__ import annotations

import gc
import os
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx

from bench.common import Row, percentile, print_rows
from gateway.app import build_app
from gateway.bus import Consumer
from gateway.config import parse_config
from gateway.messages import ActionTypes, QueueMessage, TaskDefinition

N_TASKS = 10_000
REPEATS = 200
MB = 1024 * 1024

CONFIG = {
    "shutdown_grace": 0,
    "services": {
        "desk": {"type": "human", "max_queued_tasks": 2 * N_TASKS},
        "echo": {"type": "workflow", "source": "examples.echo:workflow"},
    },
}


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: peak RSS is the best we have
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


async def timed_ms(request: Callable[[], Awaitable[httpx.Response]], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        response = await request()
        samples.append((time.perf_counter() - start) * 1000)
        response.raise_for_status()
    return samples


async def latencies(client: httpx.AsyncClient) -> dict[str, list[float]]:
    return {
        "first page": await timed_ms(lambda: client.get("/services/desk/tasks?limit=50"), REPEATS),
        "last page": await timed_ms(
            lambda: client.get(f"/services/desk/tasks?limit=50&offset={N_TASKS - 50}"), REPEATS
        ),
        "echo run": await timed_ms(
            lambda: client.post("/services/echo/run", json={"kwargs": {"message": "hi"}}),
            REPEATS // 4,
        ),
    }


async def wait_until_waiting(client: httpx.AsyncClient, count: int, tracked: bool) -> None:
    """Until the human service holds `count` tasks (and the control plane shows them waiting)."""
    with anyio.fail_after(60):
        while True:
            info = (await client.get("/services/desk/")).json()
            total = count
            if tracked:
                page = await client.get("/control_plane/tasks?status=waiting_for_human&limit=1")
                total = page.json()["total"]
            if info["num_tasks"] == count and total == count:
                return
            await anyio.sleep(0.05)


async def feed(app: Any, tracked: bool) -> None:
    """Queue N_TASKS questions: control-plane tasks, or tool calls from a (silent) asker."""
    runtime = app.state.runtime
    if not tracked:
        runtime.bus.register_consumer(Consumer(message_type="asker", handler=_ignore, id_="asker"))
    for n in range(N_TASKS):
        task = TaskDefinition(input=f"Approve request #{n}? Answer yes or no.")
        if tracked:
            await runtime.control_plane.submit(task, "desk")
        else:
            await runtime.bus.publish(
                QueueMessage(
                    publisher_id="asker",
                    type="desk",
                    action=ActionTypes.NEW_TOOL_CALL,
                    data=task.model_dump(),
                )
            )


async def _ignore(message: QueueMessage) -> None:
    return None


async def scenario(tracked: bool) -> dict[str, Any]:
    app = build_app(parse_config(CONFIG, "bench.human_tasks"))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            await latencies(client)  # warm-up
            empty = await latencies(client)

            gc.collect()
            rss_before = rss_bytes()
            tracemalloc.start()
            heap_before = tracemalloc.get_traced_memory()[0]
            await feed(app, tracked)
            await wait_until_waiting(client, N_TASKS, tracked)
            gc.collect()
            heap_growth = tracemalloc.get_traced_memory()[0] - heap_before
            tracemalloc.stop()
            rss_after = rss_bytes()

            full = await latencies(client)
    return {
        "empty": empty,
        "full": full,
        "heap": heap_growth,
        "rss": (rss_before, rss_after),
    }


def rows_for(label: str, m: dict[str, Any]) -> list[Row]:
    empty, full = m["empty"], m["full"]
    rows = []
    for name, page in (("first page", "offset=0"), ("last page", f"offset={N_TASKS - 50}")):
        for q in (50, 95):
            rows.append(
                Row(
                    f"{label}: GET /tasks?limit=50&{page} vs empty, p{q}",
                    percentile(full[name], q),
                    percentile(empty[name], q),
                    "ms",
                    "< 5 ms",
                    higher_is_better=False,
                )
            )
    rows.append(
        Row(
            f"{label}: echo POST /run vs empty queue, p50",
            percentile(full["echo run"], 50),
            percentile(empty["echo run"], 50),
            "ms",
            "~1x",
            higher_is_better=False,
        )
    )
    rss_before, rss_after = m["rss"]
    rows.append(
        Row(
            f"{label}: heap growth (tracemalloc)",
            m["heap"] / MB,
            None,
            "MB",
            "<= 10 MB",
            higher_is_better=False,
        )
    )
    rows.append(
        Row(
            f"{label}: heap per waiting task",
            m["heap"] / N_TASKS,
            None,
            "bytes",
            "",
            higher_is_better=False,
        )
    )
    rows.append(
        Row(
            f"{label}: RSS vs empty queue (incl. tracemalloc's own)",
            rss_after / MB,
            rss_before / MB,
            "MB",
            "",
            higher_is_better=False,
        )
    )
    return rows


async def measure() -> list[Row]:
    rows = rows_for("10k as tool calls", await scenario(tracked=False))
    rows += rows_for("10k as control-plane tasks", await scenario(tracked=True))
    return rows


def run() -> list[Row]:
    return anyio.run(measure)


def main() -> None:
    print_rows(f"human tasks: {N_TASKS:,} outstanding", run())


if __name__ == "__main__":
    main()
