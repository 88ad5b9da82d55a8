"""Instructions per request (callgrind): the task path without the machine's noise.

On a shared 2-core machine the same code measures up to ±20% apart from one round to the next
(the gateway's path, which touches more memory than the bare endpoint's, moves the most), so a
change of a few percent cannot be seen in req/s. Instruction counts are the same run after
run. This drives the apps in-process (ASGI calls, no sockets), once with WARM + FEW and once
with WARM + MANY requests under `valgrind --tool=callgrind`, and divides the difference by
MANY - FEW, so start-up and warm-up cancel out. Targets as in bench.roundtrip: the bare endpoint
(its workflow as a process serving it alone has it: not prepared), the gateway's `/run`, and
`POST /control_plane/tasks` + long-poll result; plus the bare endpoint with its workflow prepared
as the gateway prepares it (services.prepared), so that `/run` minus that row is what the gateway
itself adds to a run.

Not part of `make bench` (it has no `run()`: it takes a few minutes, as valgrind runs Python
~50x slower) and not a measure of time: a path can run fewer instructions and still take longer
when it misses the caches more. Needs valgrind (`apt-get install valgrind`).

The tool targets (named only) count one tool call instead of a request: `tool-direct` and
`sync-direct` call the tool itself (`tool.acall`; the async bench tool, the demo's sync `add`),
`tool-bus` and `sync-bus` the same tool over the bus (MetaServiceTool -> ToolService -> reply), so
bus minus direct is what the gateway adds per call without the noise of bench.tool_roundtrip's
CPU times (most of all a sync tool's thread hand-off).

    python -m bench.instructions            # all four targets, two runs at a time
    python -m bench.instructions run bare   # some of them
    python -m bench.instructions tool-direct tool-bus sync-direct sync-bus
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.common import ROOT, Row, pick_targets, print_rows

TARGETS = ("bare", "prepared", "run", "tasks")
TOOL_TARGETS = ("tool-direct", "tool-bus", "sync-direct", "sync-bus")
WARM, FEW, MANY = 100, 100, 400
CONFIG = {
    "default_service": "echo",
    "services": {"echo": {"type": "workflow", "source": "examples.echo:workflow"}},
}
RUN_BODY = json.dumps({"kwargs": {"message": "ping"}}).encode()
TASK_BODY = json.dumps({"service": "echo", "input": {"message": "ping"}}).encode()


# -- the driver, run under callgrind: python -m bench.instructions --drive TARGET COUNT ----------
async def _call(app: Any, method: str, path: str, body: bytes = b"", query: bytes = b"") -> bytes:
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # never disconnects
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"host", b"bench"), (b"content-type", b"application/json")]
    headers.append((b"content-length", str(len(body)).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "root_path": "",
        "state": {},
    }
    await app(scope, receive, send)
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


async def _one(app: Any, target: str) -> None:
    if target == "tasks":
        accepted = json.loads(await _call(app, "POST", "/control_plane/tasks", TASK_BODY))
        path = f"/control_plane/tasks/{accepted['task_id']}/result"
        answer = await _call(app, "GET", path, query=b"wait=30")
    else:
        path = "/services/echo/run" if target == "run" else "/run"
        answer = await _call(app, "POST", path, RUN_BODY)
    if b'"result":"ping"' not in answer:
        raise RuntimeError(f"bad answer: {answer!r}")


async def _drive_tool(target: str, count: int) -> None:
    from llama_index.core.tools import FunctionTool

    from bench.tool_roundtrip import async_add
    from examples.tools import add
    from gateway.collector import served_collector
    from gateway.runtime import Runtime
    from services.tool.meta_tool import MetaServiceTool
    from services.tool.service import ToolService

    if target.startswith("sync"):
        tool = FunctionTool.from_defaults(fn=add)
    else:
        tool = FunctionTool.from_defaults(async_fn=async_add, name="async_add")
    service = ToolService(service_name="calc", tools=[tool])
    runtime = Runtime.for_services([service], secret=b"bench")
    async with runtime.running():
        call = tool.acall
        if target.endswith("bus"):
            call = MetaServiceTool.from_tool_service(service, runtime.bus)[0].acall
        with served_collector():  # as a served gateway has it: fewer, steadier collections
            await _tool_calls(call, count)


async def _tool_calls(call: Any, count: int) -> None:
    for i in range(WARM + count):
        output = await call(a=i, b=1)
        if output.is_error or str(output.content) != str(i + 1):
            raise RuntimeError(f"bad answer: {output!r}")


async def _drive(target: str, count: int) -> None:
    if target in TOOL_TARGETS:
        await _drive_tool(target, count)
        return
    from bench.roundtrip import WORKFLOW, _build_bare_app
    from gateway.app import build_app
    from gateway.collector import served_collector
    from gateway.config import parse_config

    if target in ("bare", "prepared"):
        app = _build_bare_app()
        if target == "prepared":
            from gateway.config import import_object
            from services.prepared import prepare

            prepare(import_object(WORKFLOW))  # the bare app's own workflow object
        for _ in range(WARM + count):
            await _one(app, target)
        return
    app = build_app(parse_config(CONFIG, "bench"))
    async with app.router.lifespan_context(app):
        with served_collector():  # as a served gateway has it
            for _ in range(WARM + count):
                await _one(app, target)


def _drive_main(target: str, count: int) -> None:
    os.environ.setdefault("GATEWAY_SECRET", "bench")
    import uvloop  # what uvicorn serves with

    gc.collect()
    uvloop.run(_drive(target, count))


# -- the measurement ------------------------------------------------------------------------------
def _instructions(target: str, count: int) -> int:
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    command += [sys.executable, "-m", "bench.instructions", "--drive", target, str(count)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "0"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{target} under callgrind failed:\n{done.stderr[-2000:]}")
    found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from callgrind:\n{done.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def per_request(target: str) -> float:
    with ThreadPoolExecutor(2) as pool:  # the two runs of one target side by side
        few, many = pool.map(lambda n: _instructions(target, n), (FEW, MANY))
    return (many - few) / (MANY - FEW)


def measure(targets: tuple[str, ...] = TARGETS) -> list[Row]:
    counts = {target: per_request(target) for target in targets}
    rows = _tool_rows(counts)
    counts = {target: n for target, n in counts.items() if target not in TOOL_TARGETS}
    bare = counts.get("bare")
    unit = "instr/req"
    for target in counts:
        if target == "bare":
            rows.append(Row("bare endpoint (workflow not prepared)", counts[target], None, unit))
        else:
            name = {
                "prepared": "bare endpoint, workflow prepared",
                "run": "/run",
                "tasks": "tasks + long-poll",
            }[target]
            rows.append(Row(f"{name} vs bare", counts[target], bare, unit, higher_is_better=False))
    return rows


def _tool_rows(counts: dict[str, float]) -> list[Row]:
    rows = []
    for kind, label in (("tool", "async tool"), ("sync", "sync demo tool")):
        for way in ("direct", "bus"):
            if f"{kind}-{way}" in counts:
                rows.append(Row(f"{label}: {way}", counts[f"{kind}-{way}"], None, "instr/call"))
        if f"{kind}-direct" in counts and f"{kind}-bus" in counts:
            added = counts[f"{kind}-bus"] - counts[f"{kind}-direct"]
            rows.append(Row(f"{label}: added over the bus", added, None, "instr/call"))
    return rows


def main(argv: list[str]) -> int:
    if argv[:1] == ["--drive"]:
        _drive_main(argv[1], int(argv[2]))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    targets = tuple(argv) or TARGETS
    if pick_targets(targets, TARGETS + TOOL_TARGETS) is None:
        return 2
    print_rows("instructions per request (callgrind, in-process)", measure(targets))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
