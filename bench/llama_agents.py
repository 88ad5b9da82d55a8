"""The llama-agents protocol: `POST /workflows/echo/run` on agent-gateway against the same
request on llama-agents-server's own `WorkflowServer`, both serving the same trivial workflow.

Each is its own uvicorn subprocess (same options) on a free loopback port; load comes from `wrk`
(one thread, 1 and 16 connections, rotating rounds), or from the Python generator with a warning
when wrk is missing. Reported: the median round's throughput and p50, the worst round's p99.

    python -m bench.llama_agents
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from bench.common import (
    WRK_POST,
    Row,
    UvicornApp,
    gateway_app,
    run_and_print,
    run_load,
    run_wrk,
    serve,
    warn_no_wrk,
    write_wrk_script,
    wrk_path,
)

BODY = {"start_event": {"message": "ping"}}
EXPECT = '"result":"ping"'
CONNECTIONS = (1, 16)
ROUNDS = 3
ROUND_SECONDS = 2
CONFIG = (
    "services:\n"
    "  echo: {type: workflow, source: 'examples.echo:workflow', max_concurrent_tasks: 64}\n"
)
GOAL = ">= 2x"


def _peer_app() -> object:
    from llama_agents.server import WorkflowServer

    from examples.echo import workflow

    server = WorkflowServer()
    server.add_workflow("echo", workflow)
    return server.app


def __getattr__(name: str) -> object:
    if name == "peer_app":
        app = _peer_app()
        globals()["peer_app"] = app
        return app
    raise AttributeError(name)


Figure = tuple[float, float, float]


def _measurer(folder: Path, bases: dict[str, str]):
    script = write_wrk_script(folder, "protocol", WRK_POST, body=json.dumps(BODY), expect=EXPECT)

    def measure(target: str, connections: int) -> Figure:
        url = bases[target] + "/workflows/echo/run"
        if wrk_path() is None:
            load = run_load(url, BODY, _has_ping, connections, 400)
            return load.rps, load.latency_ms(50), load.latency_ms(99)
        result = run_wrk(url, script, connections, ROUND_SECONDS)
        return result.rps, result.p50_ms, result.p99_ms

    return measure


def _has_ping(answer: dict) -> bool:
    return ((answer.get("result") or {}).get("value") or {}).get("result") == "ping"


def run() -> list[Row]:
    if wrk_path() is None:
        warn_no_wrk()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        apps = (
            gateway_app("gateway", CONFIG, folder),
            UvicornApp("peer", ("bench.llama_agents:peer_app",), ready_path="/health"),
        )
        with serve(folder, *apps) as bases:
            measure = _measurer(folder, bases)
            for connections in CONNECTIONS:
                for target in ("gateway", "peer"):
                    measure(target, connections)  # warm-up
                rounds: dict[str, list[Figure]] = {"gateway": [], "peer": []}
                for n in range(ROUNDS):
                    order = ["gateway", "peer"] if n % 2 == 0 else ["peer", "gateway"]
                    for target in order:
                        rounds[target].append(measure(target, connections))
                ours, theirs = (_summary(rounds[t]) for t in ("gateway", "peer"))
                name = f"llama_agents c={connections} POST /workflows/echo/run"
                rows += [
                    Row(f"{name} throughput (median round)", ours[0], theirs[0], "req/s", GOAL),
                    Row(f"{name} p50 (median round)", ours[1], theirs[1], "ms", "", False),
                    Row(f"{name} p99 (worst round)", ours[2], theirs[2], "ms", "", False),
                ]
    return rows


def _summary(figures: list[Figure]) -> Figure:
    rate, p50, _ = sorted(figures)[len(figures) // 2]
    return rate, p50, max(f[2] for f in figures)


def main() -> None:
    run_and_print("llama_agents: agent-gateway (value) vs WorkflowServer (baseline)", run)


if __name__ == "__main__":
    main()
