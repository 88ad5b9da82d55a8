"""The gateway's task path against a bare Starlette endpoint awaiting the same workflow.

Three targets, each its own uvicorn subprocess (same options) on a free loopback port:
- bare: `POST /run` of a Starlette app that awaits `workflow.run(**kwargs)` (the baseline);
- run: the gateway's `POST /services/echo/run` (submit through the control plane, wait, answer);
- tasks: the gateway's `POST /control_plane/tasks` then `GET /control_plane/tasks/{id}/result
  ?wait=30` (a long-poll), counted in tasks/s (two requests each).

Load comes from `wrk` (apt-get install wrk): one thread, 1 and 16 connections, rounds of
ROUND_SECONDS that rotate the targets so drift on a shared machine hits all of them alike.
Each round is served by a fresh pair of server processes (PROCESSES of them in turn): how fast
one process runs depends on where its code and data land in memory (with ASLR off a given setup
always lands the same way; with it, the gateway's CPU per request moved by ~40% between
processes), so a single process is one sample, not the answer.
Reported for each: the median round by throughput (its throughput and p50) and the worst p99 of
all rounds, so a bad round shows instead of being picked away; also the server process's CPU
time per request in the median round (user + system, from /proc: steadier than req/s on a
shared machine). Without wrk the Python load generator is used instead, with a warning: its
figures are client-bound.

    python -m bench.roundtrip
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx

from bench.common import (
    WRK_POST,
    WRK_SUBMIT_AND_POLL,
    Row,
    UvicornApp,
    answer_has,
    cpu_seconds,
    gateway_app,
    run_and_print,
    run_load,
    run_wrk,
    serve,
    warn_no_wrk,
    write_wrk_script,
    wrk_path,
)

WORKFLOW = "examples.echo:workflow"
RUN_BODY = {"kwargs": {"message": "ping"}}
TASK_BODY = {"service": "echo", "input": {"message": "ping"}}
EXPECT = '"result":"ping"'  # in the bare answer, in /run's and in the task record's
CONNECTIONS = (1, 16)
PROCESSES = 3  # odd, so there is a median round: one round per fresh pair of servers
ROUND_SECONDS = 2
WARMUP_SECONDS = 1  # wrk takes whole seconds
CONFIG = (
    "default_service: echo\n"
    "services:\n"
    f"  echo: {{type: workflow, source: '{WORKFLOW}', max_concurrent_tasks: 64}}\n"
)
GOALS = {"run": ">= 0.85x", "tasks": ">= 0.75x"}


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


# -- one measurement: (units per second, p50 ms, p99 ms, server CPU µs per unit) ----------------
Figure = tuple[float, float, float, float]


def wrk_scripts(folder: Path) -> dict[str, Path]:
    """The wrk script of each target (bare and run POST a run; tasks submits and long-polls)."""
    post = write_wrk_script(folder, "post", WRK_POST, body=json.dumps(RUN_BODY), expect=EXPECT)
    tasks = write_wrk_script(
        folder,
        "tasks",
        WRK_SUBMIT_AND_POLL,
        body=json.dumps(TASK_BODY),
        expect=EXPECT,
        submit_path="/control_plane/tasks",
        result_prefix="/control_plane/tasks/",
    )
    return {"bare": post, "run": post, "tasks": tasks}


def _wrk_measure(folder: Path, bases: dict[str, str]):
    scripts = wrk_scripts(folder)
    urls = {
        "bare": bases["bare"] + "/run",
        "run": bases["gateway"] + "/services/echo/run",
        "tasks": bases["gateway"] + "/control_plane/tasks",
    }

    def measure(target: str, connections: int, seconds: int) -> Figure:
        pid = bases.pids["bare" if target == "bare" else "gateway"]
        cpu = cpu_seconds(pid)
        result = run_wrk(urls[target], scripts[target], connections, seconds)
        cpu = cpu_seconds(pid) - cpu
        units = result.completed if target == "tasks" else result.requests
        return units / result.seconds, result.p50_ms, result.p99_ms, cpu / max(units, 1) * 1e6

    return measure


def _python_measure(bases: dict[str, str]):
    """The fallback: requests instead of seconds (the httpx generator counts requests)."""
    rate = 500  # requests per second it roughly manages; sizes a round close to ROUND_SECONDS

    def measure(target: str, connections: int, seconds: float) -> Figure:
        count = max(50, int(rate * seconds))
        if target == "tasks":
            return _python_tasks(bases["gateway"], connections, count // 2)
        url = bases["bare"] + "/run"
        if target == "run":
            url = bases["gateway"] + "/services/echo/run"
        load = run_load(url, RUN_BODY, answer_has("result", "ping"), connections, count)
        return load.rps, load.latency_ms(50), load.latency_ms(99), float("nan")

    return measure


def _python_tasks(base: str, connections: int, tasks: int) -> Figure:
    remaining = tasks

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            accepted = await client.post("/control_plane/tasks", json=TASK_BODY)
            task_id = accepted.json()["task_id"]
            done = await client.get(f"/control_plane/tasks/{task_id}/result", params={"wait": 30})
            if done.status_code != 200 or done.json()["result"]["result"] != "ping":
                raise RuntimeError(f"bad answer: {done.text}")

    async def drive() -> float:
        limits = httpx.Limits(max_connections=connections)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
            started = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for _ in range(connections):
                    tg.start_soon(worker, client)
            return time.perf_counter() - started

    elapsed = anyio.run(drive)
    return tasks / elapsed, float("nan"), float("nan"), float("nan")


def summarise(figures: list[Figure]) -> Figure:
    """The median round by throughput (its rate, p50 and CPU), with the worst p99 of all rounds."""
    rate, p50, _, cpu = sorted(figures)[len(figures) // 2]
    return rate, p50, max(f[2] for f in figures), cpu


TARGETS = ("bare", "run", "tasks")


def _round(measure, connections: int, n: int, warm_up: bool) -> dict[str, Figure]:
    """One round of every target (after a warm-up of fresh servers), the order rotating
    with `n`."""
    targets = list(TARGETS)
    if warm_up:
        for target in targets:
            measure(target, connections, WARMUP_SECONDS)
    order = targets[n % 3 :] + targets[: n % 3]
    return {target: measure(target, connections, ROUND_SECONDS) for target in order}


def run() -> list[Row]:
    use_wrk = wrk_path() is not None
    if not use_wrk:
        warn_no_wrk()
    client = "wrk" if use_wrk else "httpx (client-bound)"
    rows: list[Row] = []
    rounds = {c: {t: [] for t in TARGETS} for c in CONNECTIONS}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        apps = (
            gateway_app("gateway", CONFIG, folder),
            UvicornApp("bare", ("bench.roundtrip:bare_app",)),
        )
        for n in range(PROCESSES):
            with serve(folder, *apps) as bases:
                measure = _wrk_measure(folder, bases) if use_wrk else _python_measure(bases)
                for connections in CONNECTIONS:
                    warm_up = connections == CONNECTIONS[0]
                    for target, figure in _round(measure, connections, n, warm_up).items():
                        rounds[connections][target].append(figure)
        for connections in CONNECTIONS:
            got = {t: summarise(f) for t, f in rounds[connections].items()}
            bare, gw, tasks = got["bare"], got["run"], got["tasks"]
            c = f"c={connections} ({client})"
            p50_goal = "<= 1.2 ms" if connections == 1 else ""
            rows += [
                Row(
                    f"roundtrip {c} /run throughput (median round)",
                    gw[0],
                    bare[0],
                    "req/s",
                    GOALS["run"],
                ),
                Row(
                    f"roundtrip {c} /run p50 (median round)",
                    gw[1],
                    bare[1],
                    "ms",
                    p50_goal,
                    False,
                ),
                Row(f"roundtrip {c} /run p99 (worst round)", gw[2], bare[2], "ms", "", False),
                Row(
                    f"roundtrip {c} tasks + long-poll throughput (median round)",
                    tasks[0],
                    bare[0],
                    "tasks/s",
                    GOALS["tasks"],
                ),
            ]
            if use_wrk:  # the server's CPU per request: steadier than req/s when shared
                rows += [
                    Row(
                        f"roundtrip {c} /run server CPU (median round)",
                        gw[3],
                        bare[3],
                        "µs/req",
                        "",
                        False,
                    ),
                    Row(
                        f"roundtrip {c} tasks + long-poll server CPU (median round)",
                        tasks[3],
                        bare[3],
                        "µs/task",
                        "",
                        False,
                    ),
                ]
    return rows


def main() -> None:
    run_and_print("roundtrip: gateway (value) vs bare Starlette + same workflow (baseline)", run)


if __name__ == "__main__":
    main()
