"""Tool calls: over the bus against a direct call, and over HTTP against a bare endpoint.

(a) In process: `MetaServiceTool.acall` (over the bus -> ToolService -> the tool -> the answer
    back) against `tool.acall` on the same tool. Measured in CPU time of the process (all its
    threads): the machine is shared, and wall-clock time also counts whatever ran instead of us,
    often more than the few µs in question. Even CPU time drifts by tens of percent over seconds
    on a shared VM, so the two are measured in pairs of short batches, one right after the
    other (which goes first alternates), and each figure is the median over the pairs: the
    added cost is the median of the pairs' differences, so a slow spell hits both sides alike.
    Once with an async tool, once with the demo's synchronous `add` (which llama-index runs in a
    worker thread). Next to a thread the same Python costs more CPU (on these 2-core VMs about
    twice: the reference rows time one fixed bit of code after each tool), so the sync tool's
    added figure is the async tool's bus code, only dearer. For reference, the bare bus round
    trip (publish -> consumer -> publish back -> Event), which every bus hop pays whatever the
    service does.
(b) Over HTTP: `POST /services/calc/run` on the gateway against a bare Starlette endpoint calling
    the same tool, both under uvicorn in their own subprocess on free loopback ports, driven by
    the same load generator (wrk when installed, else httpx) at concurrency 1 and 32.

    python -m bench.tool_roundtrip                # both
    python -m bench.tool_roundtrip --in-process   # (a) only, a few seconds
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from bench.common import (
    WRK_POST,
    Row,
    UvicornApp,
    answer_has,
    gateway_app,
    run_and_print,
    run_load,
    run_wrk,
    serve,
    warn_no_wrk,
    write_wrk_script,
    wrk_path,
)

BATCH = 100  # sequential calls per batch, in process
PAIRS = 61  # batches of each side, measured in pairs
# (concurrency, warm-up requests, measured requests)
HTTP_PLAN = [(1, 100, 600), (32, 150, 1000)]
PAYLOAD = {"tool": "add", "kwargs": {"a": 2, "b": 3}}


async def async_add(a: float, b: float) -> float:
    """Add two numbers (a coroutine, so no worker thread is involved)."""
    return a + b


# -- (a) in process -------------------------------------------------------------------------------
async def _per_call(call: Any, calls: int) -> float:
    """µs of CPU per call (see the module docstring)."""
    started = time.process_time()
    for i in range(calls):
        await call(a=i, b=1)
    return (time.process_time() - started) / calls * 1e6


async def _paired(first: Any, second: Any) -> tuple[float, float, float]:
    """Medians over PAIRS of (µs per call of `first`, of `second`, second minus first)."""
    await _per_call(first, BATCH * 3)  # warm-up
    await _per_call(second, BATCH * 3)
    a_runs, b_runs, diffs = [], [], []
    for i in range(PAIRS):
        if i % 2:
            b = await _per_call(second, BATCH)
            a = await _per_call(first, BATCH)
        else:
            a = await _per_call(first, BATCH)
            b = await _per_call(second, BATCH)
        a_runs.append(a)
        b_runs.append(b)
        diffs.append(b - a)
    return statistics.median(a_runs), statistics.median(b_runs), statistics.median(diffs)


def _then_fixed_work(call: Any) -> Any:
    """`call`, then the same few µs of Python on the event loop's thread every time (empty
    anyio cancel scopes, as a call over the bus enters one): how much that costs next to the
    tool shows what the tool's way of running does to the cost of any code around it."""

    async def run(**kwargs: Any) -> Any:
        output = await call(**kwargs)
        for _ in range(4):
            with anyio.CancelScope():
                pass
        return output

    return run


async def _bare_bus_round_trip(calls: int) -> float:
    """µs per publish -> consumer -> publish back -> Event, with no service in between."""
    from gateway.bus import Consumer
    from gateway.bus.memory import MessageBus
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
        runs = [await _per_call(one, BATCH) for _ in range(calls // BATCH)]
        tg.cancel_scope.cancel()
    return statistics.median(runs)


async def _in_process() -> list[Row]:
    from llama_index.core.tools import FunctionTool

    from examples.tools import add
    from gateway.runtime import Runtime
    from services.tool.meta_tool import MetaServiceTool
    from services.tool.service import ToolService

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
        fixed_work: dict[str, float] = {}
        for label, tool in tools.items():
            d, b, added = await _paired(tool.acall, remote[tool.metadata.name].acall)
            rows += [
                Row(f"bus: direct tool.acall, {label}", d, None, "µs CPU/call", "", False),
                Row(f"bus: MetaServiceTool round trip, {label}", b, d, "µs CPU/call", "", False),
                Row(f"bus: added per call, {label}", added, None, "µs CPU/call", "< 30 µs", False),
            ]
            *_, fixed_work[label] = await _paired(tool.acall, _then_fixed_work(tool.acall))
        for label, cost in fixed_work.items():
            baseline = None if label == "async tool" else fixed_work["async tool"]
            name = f"reference: the same 4 empty cancel scopes after the {label}"
            rows.append(Row(name, cost, baseline, "µs CPU/call", "", False))
    floor = await _bare_bus_round_trip(BATCH * PAIRS)
    rows.append(
        Row("bus: bare publish/consume/reply (reference)", floor, None, "µs CPU/call", "", False)
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


def _rate(url: str, concurrency: int, requests: int, script: Path | None) -> float:
    """req/s at `concurrency` connections: wrk for about `requests / 500` seconds with `script`,
    else `requests` POSTs by the httpx generator (each worker with its own connection)."""
    if script is not None:
        return run_wrk(url, script, concurrency, max(1, round(requests / 500))).rps
    load = run_load(
        url, PAYLOAD, answer_has("output", "5"), concurrency, requests, client_per_worker=True
    )
    return load.rps


def _over_http() -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = (
            "services:\n"
            "  calc: {type: tool, source: 'examples.tools:tools', max_concurrent_calls: 64}\n"
        )
        apps = (
            gateway_app("gateway", config, folder),
            UvicornApp("bare", ("--factory", "bench.tool_roundtrip:build_bare_app")),
        )
        script = None
        if wrk_path() is not None:
            body = json.dumps(PAYLOAD)
            script = write_wrk_script(folder, "tool", WRK_POST, body=body, expect='"output":"5"')
        else:
            warn_no_wrk()
        with serve(folder, *apps) as bases:
            targets = {"gateway": bases["gateway"] + "/services/calc/run"}
            targets["bare"] = bases["bare"] + "/run"
            for concurrency, warmup, requests in HTTP_PLAN:
                for url in targets.values():
                    _rate(url, concurrency, warmup, script)
                best = {"gateway": 0.0, "bare": 0.0}
                for _ in range(2):  # alternate, best of two, so drift hits both alike
                    for name, url in targets.items():
                        rate = _rate(url, concurrency, requests // 2, script)
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


def run_in_process() -> list[Row]:
    return anyio.run(_in_process)


def main() -> None:
    if "--in-process" in sys.argv[1:]:
        run_and_print("tool round trip: bus vs direct call (in process only)", run_in_process)
        return
    run_and_print("tool round trip: bus vs direct call; gateway /run vs bare Starlette", run)


if __name__ == "__main__":
    main()
