"""Shared pieces of the benchmarks: result rows, the summary table, latency statistics, apps
under uvicorn on free loopback ports, the load generators (`wrk` when installed, else httpx) and
the modules' `main()`."""

from __future__ import annotations

import math
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx


@dataclass
class Row:
    """One figure, its same-run baseline and the ratio (figure / baseline).

    `goal` is checked, and the table says `ok` or `MISSED` next to it: a number with an optional
    comparison, `x` for a goal on the ratio, then any words (unit, remarks): `>= 0.8x bare`,
    `< 5 ms`, `0` (equal), `~1x` (within 25% on the bad side, whatever the good side).
    """

    name: str
    value: float
    baseline: float | None
    unit: str
    goal: str = ""
    higher_is_better: bool = True

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.value / self.baseline

    @property
    def met(self) -> bool | None:
        """Whether the goal is met; None when there is no goal or it is not in a checkable form."""
        return goal_met(self)


_GOAL = re.compile(r"^\s*(>=|<=|==|<|>|~)?\s*(-?[\d,]*\.?\d+)\s*(x\b)?")


def goal_met(row: Row) -> bool | None:
    match = _GOAL.match(row.goal)
    if not row.goal or match is None:
        return None
    op, number, on_ratio = (
        match.group(1) or "==",
        float(match.group(2).replace(",", "")),
        bool(match.group(3)),
    )
    subject = row.ratio if on_ratio else row.value
    if subject is None or math.isnan(subject):
        return False
    if op == "~":
        return subject >= 0.75 * number if row.higher_is_better else subject <= 1.25 * number
    return {
        ">=": subject >= number,
        "<=": subject <= number,
        ">": subject > number,
        "<": subject < number,
        "==": subject == number,
    }[op]


def goal_cell(row: Row) -> str:
    if not row.goal:
        return "-"
    met = row.met
    verdict = "unchecked" if met is None else ("ok" if met else "MISSED")
    return f"{verdict}: {row.goal}"


def percentile(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def mean(samples: list[float]) -> float:
    return statistics.fmean(samples) if samples else float("nan")


def format_table(rows: list[Row]) -> str:
    header = ("benchmark", "value", "baseline", "ratio", "unit", "goal")
    lines = [header]
    for row in rows:
        lines.append(
            (
                row.name,
                f"{row.value:,.2f}",
                "-" if row.baseline is None else f"{row.baseline:,.2f}",
                "-" if row.ratio is None else f"{row.ratio:.2f}x",
                row.unit,
                goal_cell(row),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def print_rows(title: str, rows: list[Row]) -> None:
    print(f"\n== {title}")
    print(format_table(rows))
    missed = [row.name for row in rows if row.met is False]
    if missed:
        print(f"goals MISSED: {len(missed)} of {sum(1 for row in rows if row.goal)}")


# -- servers: apps under uvicorn, each in its own subprocess on a free loopback port ---------------
ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
UVICORN_ARGS = ("--log-level", "warning", "--no-access-log")
STARTUP_TIMEOUT = 30.0  # seconds for every server to answer
STOP_TIMEOUT = 15.0  # seconds for a server to exit after SIGTERM before it is killed


def free_port() -> int:
    """A TCP port free on the loopback address right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class UvicornApp:
    """One app to serve: `python -m uvicorn <*target> --host 127.0.0.1 --port <free> ...`.

    `target` is the app string, with uvicorn options such as `--factory` before it if needed;
    `env` is added to this process's environment (and PYTHONPATH=ROOT); the app counts as up once
    `ready_path` gives any HTTP answer. `name` names the log file and the errors. `wrapper` runs
    the server inside another program (valgrind, say), which may need a longer `startup_timeout`.
    """

    name: str
    target: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    ready_path: str = "/"
    wrapper: tuple[str, ...] = ()
    startup_timeout: float = STARTUP_TIMEOUT


def gateway_app(
    name: str, config_yaml: str, folder: Path, env: Mapping[str, str] | None = None
) -> UvicornApp:
    """`gateway.app:app` serving `config_yaml` (written to `folder/<name>.yaml`), up once
    `/healthz` answers. GATEWAY_SECRET is "bench" unless the environment or `env` sets it."""
    config = folder / f"{name}.yaml"
    config.write_text(config_yaml)
    return UvicornApp(
        name,
        ("gateway.app:app",),
        {
            "GATEWAY_SECRET": os.environ.get("GATEWAY_SECRET", "bench"),
            "GATEWAY_CONFIG": str(config),
            **(env or {}),
        },
        ready_path="/healthz",
    )


def _wait_until_up(app: UvicornApp, process: subprocess.Popen, base: str, log: Path) -> None:
    deadline = time.monotonic() + app.startup_timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{app.name} exited early:\n{log.read_text()}")
        try:
            httpx.get(base + app.ready_path, timeout=1)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{app.name} did not start:\n{log.read_text()}") from None
            time.sleep(0.05)


class Served(dict[str, str]):
    """{name: base URL} of served apps, plus `pids` {name: process id}."""

    pids: dict[str, int]


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, every thread) a process has used so far; Linux /proc only.

    On a machine shared with other work, a server's CPU per request moves much less than its
    throughput does, so the benchmarks report both."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def serve(folder: Path, *apps: UvicornApp) -> Iterator[Served]:
    """Start every app at once (logs in `folder/<name>.log`), yield {name: base URL} (with their
    `pids`) once each one answers, and stop them all at the end."""
    processes: list[subprocess.Popen] = []
    bases = Served()
    bases.pids = {}
    try:
        for app in apps:
            port = free_port()
            log = folder / f"{app.name}.log"
            with log.open("w") as out:
                process = subprocess.Popen(
                    [*app.wrapper, sys.executable, "-m", "uvicorn", *app.target]
                    + ["--host", HOST, "--port", str(port), *UVICORN_ARGS],
                    cwd=ROOT,
                    env={**os.environ, "PYTHONPATH": str(ROOT), **app.env},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            processes.append(process)
            bases[app.name] = f"http://{HOST}:{port}"
            bases.pids[app.name] = process.pid
        for app, process in zip(apps, processes, strict=True):
            _wait_until_up(app, process, bases[app.name], folder / f"{app.name}.log")
        yield bases
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def serve_gateway(config_yaml: str, folder: Path, name: str) -> Iterator[str]:
    """One gateway (see `gateway_app`) under uvicorn; yields its base URL."""
    with serve(folder, gateway_app(name, config_yaml, folder)) as bases:
        yield bases[name]


# -- load generator --------------------------------------------------------------------------------
@dataclass
class Load:
    """What one `run_load` measured."""

    requests: int
    elapsed: float  # seconds, first request sent to last answer read
    latencies: list[float]  # seconds, one per request

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed

    def latency_ms(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000


def answer_has(key: str, expected: Any) -> Callable[[Any], bool]:
    """A `check` for `run_load`: the JSON answer's `key` equals `expected`."""

    def check(body: Any) -> bool:
        return body[key] == expected

    return check


def run_load(
    url: str,
    payload: Any,
    check: Callable[[Any], bool],
    concurrency: int,
    requests: int,
    *,
    client_per_worker: bool = False,
) -> Load:
    """`requests` POSTs of `payload` (as JSON) to `url` by `concurrency` workers, in a fresh event
    loop (`anyio.run`).

    Every answer must be a 200 whose JSON body passes `check`, or RuntimeError. The workers share
    one httpx client with `concurrency` connections, or with `client_per_worker` each opens its own
    (its setup then counts in `elapsed`; one shared pool is itself the bottleneck at 32
    connections).
    """
    latencies: list[float] = []
    remaining = requests

    async def send(client: httpx.AsyncClient) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            response = await client.post(url, json=payload)
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200 or not check(response.json()):
                raise RuntimeError(f"bad answer from {url}: {response.text}")

    async def drive() -> float:
        async with AsyncExitStack() as stack:
            shared: httpx.AsyncClient | None = None
            if not client_per_worker:
                limits = httpx.Limits(
                    max_connections=concurrency, max_keepalive_connections=concurrency
                )
                shared = httpx.AsyncClient(limits=limits, timeout=30)
                await stack.enter_async_context(shared)

            async def worker() -> None:
                if shared is not None:
                    await send(shared)
                    return
                async with httpx.AsyncClient(timeout=30) as own:
                    await send(own)

            started = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for _ in range(concurrency):
                    tg.start_soon(worker)
            return time.perf_counter() - started

    elapsed = anyio.run(drive)
    return Load(requests, elapsed, latencies)


# -- wrk: the load generator for HTTP throughput ---------------------------------------------------
# A Python load generator on the same small machine saturates near the server's own rate and holds
# the baseline down with it, which hides the gap being measured. `wrk` (C, one thread, event
# loop) costs a fraction of a request's CPU; the httpx generator above is the fallback.
WRK_THREADS = 1


def wrk_path() -> str | None:
    """The `wrk` binary (apt-get install wrk), or None."""
    return shutil.which("wrk")


def warn_no_wrk() -> None:
    print(
        "WARNING: wrk is not installed (apt-get install wrk); falling back to the Python load "
        "generator, whose figures are client-bound (it saturates near the server's own rate).",
        file=sys.stderr,
    )


# Shared by every script: count answers the `check` function refuses, report them in `done`.
_WRK_COMMON = """
local threads = {}
bad = 0
first_bad = nil
function setup(thread) table.insert(threads, thread) end
function done(summary, latency, requests)
  local total_bad, sample, extra = 0, nil, 0
  for _, t in ipairs(threads) do
    total_bad = total_bad + (t:get("bad") or 0)
    sample = sample or t:get("first_bad")
    extra = extra + (t:get("completed") or 0)
  end
  io.write(string.format("BENCH bad=%d\\nBENCH completed=%d\\n", total_bad, extra))
  if sample then io.write("BENCH first_bad=" .. sample .. "\\n") end
end
"""

# POST `body` to the URL's path; an answer is good when it is a 200 holding `expect`.
WRK_POST = (
    _WRK_COMMON
    + """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
function response(status, headers, body)
  if status ~= 200 or not string.find(body, EXPECT, 1, true) then
    bad = bad + 1
    first_bad = first_bad or (status .. " " .. body)
  end
end
"""
)

# Submit a task (POST, 202 with its id), then long-poll its result (GET .../result?wait=30, 200
# holding `expect`). One thread drives every connection: ids of accepted tasks wait in a queue and
# a connection that is free polls the oldest one, or submits a new task when none waits.
WRK_SUBMIT_AND_POLL = (
    _WRK_COMMON
    + """
completed = 0
local queue, head, tail = {}, 1, 0
local headers = {["Content-Type"] = "application/json"}
function request()
  if head <= tail then
    local id = queue[head]
    queue[head] = nil
    head = head + 1
    return wrk.format("GET", RESULT_PREFIX .. id .. "/result?wait=30")
  end
  return wrk.format("POST", SUBMIT_PATH, headers, wrk.body)
end
function response(status, headers, body)
  if status == 202 then
    local id = string.match(body, '"task_id"%s*:%s*"([^"]+)"')
    if id then tail = tail + 1; queue[tail] = id; return end
  elseif status == 200 and string.find(body, EXPECT, 1, true) then
    completed = completed + 1
    return
  end
  bad = bad + 1
  first_bad = first_bad or (status .. " " .. body)
end
"""
)


def _lua_string(value: str) -> str:
    return "[==[" + value + "]==]"


def write_wrk_script(folder: Path, name: str, template: str, **values: str) -> Path:
    """`template` with Lua globals set first (`EXPECT`, `SUBMIT_PATH`, `wrk.body`...)."""
    lines = []
    for key, value in values.items():
        target = "wrk.body" if key == "body" else key.upper()
        lines.append(f"{target} = {_lua_string(value)}")
    path = folder / f"{name}.lua"
    path.write_text("\n".join(lines) + "\n" + template)
    return path


@dataclass
class WrkResult:
    """What one `wrk` run measured; `completed` counts tasks done by the submit-and-poll script."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    completed: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def tasks_per_s(self) -> float:
        return self.completed / self.seconds


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def run_wrk(url: str, script: Path, connections: int, seconds: int) -> WrkResult:
    """`wrk -t1 -c<connections> -d<seconds>s --latency -s <script> <url>`; every answer must be
    good (see the scripts) and no socket error may happen, or RuntimeError."""
    binary = wrk_path()
    if binary is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    command = [binary, f"-t{WRK_THREADS}", f"-c{connections}", f"-d{int(seconds)}s", "--latency"]
    command += ["--timeout", "30s", "-s", str(script), url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    out = done.stdout
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or out}")
    found = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s)", out)
    marks = dict(re.findall(r"^BENCH (\w+)=(.*)$", out, flags=re.MULTILINE))
    if found is None or "bad" not in marks:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    problems = [line.strip() for line in out.splitlines() if "Socket errors" in line]
    problems += [line.strip() for line in out.splitlines() if "Non-2xx" in line]
    if int(marks["bad"]):
        problems.append(f"{marks['bad']} bad answers, first: {marks.get('first_bad', '?')[:300]}")
    if problems:
        raise RuntimeError(f"wrk against {url}: " + "; ".join(problems))
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, flags=re.MULTILINE))
    return WrkResult(
        requests=int(found.group(1)),
        seconds=_ms(found.group(2) + found.group(3)) / 1000,
        p50_ms=_ms(latency["50"]),
        p99_ms=_ms(latency["99"]),
        completed=int(marks.get("completed", 0)),
    )


# -- entry point -----------------------------------------------------------------------------------
def pick_targets(argv: list[str], known: tuple[str, ...]) -> tuple[str, ...] | None:
    """The targets named on the command line (all of `known` if none), or None after saying
    which are unknown."""
    targets = tuple(argv) or known
    unknown = set(targets) - set(known)
    if unknown:
        print(f"unknown target(s): {', '.join(sorted(unknown))}; known: {known}", file=sys.stderr)
        return None
    return targets


def run_and_print(title: str, run: Callable[[], list[Row]]) -> None:
    """A module's `main()`: run the benchmark, print its table and how long it took."""
    started = time.monotonic()
    rows = run()
    print_rows(title, rows)
    print(f"\n({time.monotonic() - started:.1f} s)")
