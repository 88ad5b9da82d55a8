"""`POST /services/echo/run` on the gateway vs a bare Starlette endpoint awaiting the same workflow.

Both are served by uvicorn (same options, each in its own subprocess) on free loopback ports and
driven by the same httpx load generator: a warm-up, then a fixed number of requests at
concurrency 1 and 32. Prints req/s, p50 and p99 of both and the gateway/bare ratios.

The machine may be shared, so each figure is measured in ROUNDS rounds that alternate bare and
gateway; the round with the best throughput is reported for each (its p50/p99 with it).

    python -m bench.roundtrip
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bench.common import (
    Load,
    Row,
    UvicornApp,
    answer_has,
    gateway_app,
    run_and_print,
    run_load,
    serve,
)

WORKFLOW = "examples.echo:workflow"
PAYLOAD = {"kwargs": {"message": "ping"}}
# (concurrency, warm-up requests, measured requests per round)
PLAN = [(1, 150, 400), (32, 200, 600)]
ROUNDS = 3


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


# -- measurements --------------------------------------------------------------------------------
def _measure(url: str, concurrency: int, requests: int) -> Load:
    return run_load(url, PAYLOAD, answer_has("result", "ping"), concurrency, requests)


def _compare(bare: str, gateway: str, concurrency: int, warmup: int, requests: int):
    """Best-throughput round of each, measured in alternating rounds."""
    for url in (bare, gateway):
        _measure(url, concurrency, warmup)
    rounds: dict[str, list[Load]] = {bare: [], gateway: []}
    for n in range(ROUNDS):
        order = (bare, gateway) if n % 2 == 0 else (gateway, bare)
        for url in order:
            rounds[url].append(_measure(url, concurrency, requests))
    best = {url: max(results, key=lambda r: r.rps) for url, results in rounds.items()}
    return best[bare], best[gateway]


def run() -> list[Row]:
    rows: list[Row] = []
    config = (
        "default_service: echo\n"
        "services:\n"
        f"  echo: {{type: workflow, source: '{WORKFLOW}', max_concurrent_tasks: 64}}\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        apps = (
            gateway_app("gateway", config, folder),
            UvicornApp("bare", ("bench.roundtrip:bare_app",)),
        )
        with serve(folder, *apps) as bases:
            gateway_url = bases["gateway"] + "/services/echo/run"
            bare_url = bases["bare"] + "/run"
            for concurrency, warmup, requests in PLAN:
                base, gw = _compare(bare_url, gateway_url, concurrency, warmup, requests)
                c = f"c={concurrency}"
                p50, p99 = gw.latency_ms(50), gw.latency_ms(99)
                latency_goal = "well under 5 ms" if concurrency == 1 else ""
                rows += [
                    Row(f"roundtrip {c} throughput", gw.rps, base.rps, "req/s", ">= 0.8x"),
                    Row(f"roundtrip {c} p50", p50, base.latency_ms(50), "ms", latency_goal, False),
                    Row(f"roundtrip {c} p99", p99, base.latency_ms(99), "ms", "", False),
                ]
    return rows


def main() -> None:
    run_and_print("roundtrip: gateway (value) vs bare Starlette + same workflow (baseline)", run)


if __name__ == "__main__":
    main()
