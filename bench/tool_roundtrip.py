"""Tool calls: over the bus against a direct call, and over HTTP against a bare endpoint.

(a) In process: `MetaServiceTool.acall` (NEW_TOOL_CALL over the bus -> ToolService -> the tool
    -> COMPLETED_TOOL_CALL back) against `tool.acall` on the same tool, interleaved rounds of
    sequential calls, best round of each; the difference is what the bus path adds per call.
    Once with an async tool, once with the demo's synchronous `add` (which llama-index runs in a
    worker thread). For reference, the bare bus round trip (publish -> consumer -> publish back
    -> Event), which every bus hop pays whatever the service does.
(b) Over HTTP: `POST /services/calc/run` on the gateway against a bare Starlette endpoint calling
    the same tool, both under uvicorn in their own subprocess on free loopback ports, driven by
    the same httpx load generator at concurrency 1 and 32.

    python -m bench.tool_roundtrip
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx

from bench.common import Row, print_rows

ROOT = Path(__file__).resolve().parent.parent
CALLS = 1200  # sequential calls per round, in process
ROUNDS = 3
# (concurrency, warm-up requests, measured requests)
HTTP_PLAN = [(1, 100, 600), (32, 150, 1000)]
PAYLOAD = {"tool": "add", "kwargs": {"a": 2, "b": 3}}
UVICORN_ARGS = ["--log-level", "warning", "--no-access-log"]


async def async_add(a: float, b: float) -> float:
    """Add two numbers (a coroutine, so no worker thread is involved)."""
    return a + b


# -- (a) in process -------------------------------------------------------------------------------
async def _per_call(call: Any, calls: int) -> float:
    started = time.perf_counter()
    for i in range(calls):
        await call(a=i, b=1)
    return (time.perf_counter() - started) / calls * 1e6


async def _bare_bus_round_trip(calls: int) -> float:
    """µs per publish -> consumer -> publish back -> Event, with no service in between."""
    from gateway.bus import Consumer, MessageBus
    from gateway.messages import ActionTypes, QueueMessage, new_id

    async with anyio.create_task_group() as tg:
        bus = MessageBus()
        bus.start(tg)
        waiting: dict[str, anyio.Event] = {}

        async def reply(message: QueueMessage) -> None:
            waiting[message.data["id_"]].set()

        async def echo(message: QueueMessage) -> None:
            back = QueueMessage(
                type=message.publisher_id,
                action=ActionTypes.COMPLETED_TOOL_CALL,
                data={"id_": message.data["id_"]},
            )
            await bus.publish(back)

        bus.register_consumer(Consumer(message_type="bench-inbox", handler=reply, id_="inbox"))
        bus.register_consumer(Consumer(message_type="bench-echo", handler=echo, id_="echo"))

        async def one(**_: Any) -> None:
            call_id = new_id()
            done = waiting[call_id] = anyio.Event()
            await bus.publish(
                QueueMessage(
                    publisher_id="bench-inbox",
                    type="bench-echo",
                    action=ActionTypes.NEW_TOOL_CALL,
                    data={"id_": call_id},
                )
            )
            await done.wait()
            del waiting[call_id]

        await _per_call(one, calls // 4)
        best = min([await _per_call(one, calls) for _ in range(ROUNDS)])
        tg.cancel_scope.cancel()
    return best


async def _in_process() -> list[Row]:
    from llama_index.core.tools import FunctionTool

    from examples.tools import add
    from gateway.runtime import Runtime
    from services.meta_tool import MetaServiceTool
    from services.tool import ToolService

    tools = {
        "async tool": FunctionTool.from_defaults(async_fn=async_add, name="async_add"),
        "sync demo tool": FunctionTool.from_defaults(fn=add),
    }
    service = ToolService(service_name="calc", tools=list(tools.values()))
    runtime = Runtime.for_services([service], secret=b"bench")
    rows: list[Row] = []
    async with runtime.running():
        remote = {
            t.metadata.name: t for t in MetaServiceTool.from_tool_service(service, runtime.bus)
        }
        for label, tool in tools.items():
            meta = remote[tool.metadata.name]
            await _per_call(tool.acall, CALLS // 4)
            await _per_call(meta.acall, CALLS // 4)
            direct, over_bus = [], []
            for _ in range(ROUNDS):
                direct.append(await _per_call(tool.acall, CALLS))
                over_bus.append(await _per_call(meta.acall, CALLS))
            d, b = min(direct), min(over_bus)
            rows += [
                Row(f"bus: direct tool.acall, {label}", d, None, "µs/call", "", False),
                Row(f"bus: MetaServiceTool round trip, {label}", b, d, "µs/call", "", False),
                Row(f"bus: added per call, {label}", b - d, None, "µs/call", "< 30 µs", False),
            ]
    floor = await _bare_bus_round_trip(CALLS)
    rows.append(
        Row("bus: bare publish/consume/reply (reference)", floor, None, "µs/call", "", False)
    )
    return rows


# -- (b) over HTTP --------------------------------------------------------------------------------
def build_bare_app() -> Any:
    """`uvicorn --factory bench.tool_roundtrip:build_bare_app`: one route calling the tool."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from examples.tools import tools

    by_name = {t.metadata.name: t for t in tools}

    async def run(request: Request) -> JSONResponse:
        body = await request.json()
        output = await by_name[body["tool"]].acall(**body.get("kwargs", {}))
        return JSONResponse(
            {
                "tool": body["tool"],
                "output": output.content,
                "raw_output": output.raw_output,
                "is_error": output.is_error,
            }
        )

    return Starlette(routes=[Route("/run", run, methods=["POST"])])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def _servers(
    specs: dict[str, tuple[list[str], dict[str, str], str]], folder: Path
) -> Iterator[dict]:
    """Start one uvicorn subprocess per spec (args, env, ready path) on free loopback ports,
    all at once; yield their base URLs once every one answers; stop them all at the end."""
    processes: dict[str, subprocess.Popen] = {}
    bases: dict[str, str] = {}
    try:
        for name, (args, env, _) in specs.items():
            port = _free_port()
            with (folder / f"{name}.log").open("w") as out:
                processes[name] = subprocess.Popen(
                    [sys.executable, "-m", "uvicorn", *args]
                    + ["--host", "127.0.0.1", "--port", str(port), *UVICORN_ARGS],
                    cwd=ROOT,
                    env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            bases[name] = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        for name, (_, _, ready_path) in specs.items():
            while True:
                if processes[name].poll() is not None:
                    log = (folder / f"{name}.log").read_text()
                    raise RuntimeError(f"{name} exited early:\n{log}")
                try:
                    httpx.get(bases[name] + ready_path, timeout=1)
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{name} did not start") from None
                    time.sleep(0.05)
        yield bases
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def _load(url: str, concurrency: int, requests: int) -> float:
    """req/s of `requests` POSTs made by `concurrency` workers, each with its own connection
    (one shared httpx pool is itself the bottleneck at 32 connections)."""
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        async with httpx.AsyncClient(timeout=30) as client:
            while remaining > 0:
                remaining -= 1
                response = await client.post(url, json=PAYLOAD)
                if response.status_code != 200 or response.json()["output"] != "5":
                    raise RuntimeError(f"bad answer from {url}: {response.text}")

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    return requests / (time.perf_counter() - started)


def _over_http() -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = folder / "tools.yaml"
        config.write_text(
            "services:\n"
            "  calc: {type: tool, source: 'examples.tools:tools', max_concurrent_calls: 64}\n"
        )
        specs = {
            "gateway": (
                ["gateway.app:app"],
                {"GATEWAY_CONFIG": str(config), "GATEWAY_SECRET": "bench"},
                "/healthz",
            ),
            "bare": (["--factory", "bench.tool_roundtrip:build_bare_app"], {}, "/"),
        }
        with _servers(specs, folder) as bases:
            targets = {"gateway": bases["gateway"] + "/services/calc/run"}
            targets["bare"] = bases["bare"] + "/run"
            for concurrency, warmup, requests in HTTP_PLAN:
                for url in targets.values():
                    anyio.run(_load, url, concurrency, warmup)
                best = {"gateway": 0.0, "bare": 0.0}
                for _ in range(2):  # alternate, best of two, so drift hits both alike
                    for name, url in targets.items():
                        rate = anyio.run(_load, url, concurrency, requests // 2)
                        best[name] = max(best[name], rate)
                rows.append(
                    Row(
                        f"http: POST /services/calc/run c={concurrency}",
                        best["gateway"],
                        best["bare"],
                        "req/s",
                        ">= 0.8x bare",
                    )
                )
    return rows


def run() -> list[Row]:
    return anyio.run(_in_process) + _over_http()


def main() -> None:
    started = time.monotonic()
    rows = run()
    print_rows("tool round trip: bus vs direct call; gateway /run vs bare Starlette", rows)
    print(f"\n({time.monotonic() - started:.1f} s)")


if __name__ == "__main__":
    main()
