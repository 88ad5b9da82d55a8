"""Redis mode against the in-memory bus, in the same run, under uvicorn on loopback ports.

(a) `POST /services/echo/run` at concurrency 1: one replica on Redis against one gateway on the
    in-memory bus; the p50 difference is what Redis adds per task (goal: under 1 ms).
(b) Throughput at concurrency 16: two replicas on one Redis (wrk on each, 8 connections each)
    against one replica (16 connections). On a 2-core machine the ratio shows how much CPU the
    transport itself costs rather than how far it scales.
(c) An agent task that makes one tool call (`What is 2+3?`): the agent alone in its process on
    Redis, the calculator in two other processes, against agent and calculator in one process on
    the in-memory bus; the p50 difference is a tool call crossing processes plus (a).

Requires a Redis on 127.0.0.1:6379 (each run uses its own namespace, deleted afterwards).

    python -m bench.redis_scaleout
"""

from __future__ import annotations

import tempfile
import threading
from contextlib import ExitStack
from pathlib import Path
from uuid import uuid4

import redis

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
    write_wrk_script,
    wrk_path,
)

REDIS_URL = "redis://127.0.0.1:6379/0"
C1_REQUESTS = (100, 500)  # warm-up, measured
AGENT_REQUESTS = (20, 150)
WRK_SECONDS = 5
ECHO = {"kwargs": {"message": "hi"}}

SERVICES = """
services:
  echo: {type: workflow, source: examples.echo:workflow, max_concurrent_tasks: 64,
         max_queued_tasks: 100000}
  calculator: {type: tool, source: examples.tools:tools}
  assistant: {type: agent, source: examples.agent:build_agent, tools: [calculator]}
"""


def _config(namespace: str | None) -> str:
    head = "name: bench\n"
    if namespace:
        head += (
            f"bus: {{kind: redis, url: '{REDIS_URL}', namespace: {namespace}}}\n"
            "store: {kind: redis}\n"
        )
    return head + SERVICES


def _replica(name: str, folder: Path, namespace: str | None, services: str = "") -> UvicornApp:
    env = {"GATEWAY_SERVICES": services} if services else {}
    return gateway_app(name, _config(namespace), folder, env)


def _p50_ms(url: str, payload: dict, check, requests: tuple[int, int]) -> float:
    run_load(url, payload, check, 1, requests[0])
    return run_load(url, payload, check, 1, requests[1]).latency_ms(50)


def _wrk_rps(bases: list[str], folder: Path, connections: int) -> float:
    """wrk against every base at once (connections each); the sum of their rates."""
    script = write_wrk_script(
        folder, "echo", WRK_POST, body='{"kwargs": {"message": "hi"}}', expect='"hi"'
    )
    rates: list[float] = []
    errors: list[BaseException] = []

    def one(base: str) -> None:
        url = f"{base}/services/echo/run"
        try:
            if wrk_path() is not None:
                rates.append(run_wrk(url, script, connections, WRK_SECONDS).rps)
            else:
                rates.append(run_load(url, ECHO, answer_has("result", "hi"), connections, 400).rps)
        except Exception as exc:  # reported below, from the calling thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(base,)) for base in bases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"a wrk run failed: {errors[0]}")
    return sum(rates)


def run() -> list[Row]:
    namespace = f"bench{uuid4().hex[:8]}"
    echo = ECHO
    rows: list[Row] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            apps = [
                _replica("memory", folder, None),
                _replica("redis-a", folder, namespace, "echo,calculator"),
                _replica("redis-b", folder, namespace, "echo,calculator"),
                _replica("agent-alone", folder, namespace, "assistant"),
            ]
            with ExitStack() as stack:
                bases: dict[str, str] = {}
                for app in apps:  # one after the other: four cold starts at once time out
                    bases.update(stack.enter_context(serve(folder, app)))
                memory = _p50_ms(f"{bases['memory']}/services/echo/run", echo,
                                 answer_has("result", "hi"), C1_REQUESTS)  # fmt: skip
                on_redis = _p50_ms(f"{bases['redis-a']}/services/echo/run", echo,
                                   answer_has("result", "hi"), C1_REQUESTS)  # fmt: skip
                rows.append(
                    Row(
                        "/run p50 c=1, Redis (1 replica) vs memory bus",
                        on_redis,
                        memory,
                        "ms",
                        higher_is_better=False,
                    )  # fmt: skip
                )
                # The goal is on the difference (the row above would check the whole p50).
                rows.append(
                    Row(
                        "/run p50 c=1, added by Redis",
                        on_redis - memory,
                        None,
                        "ms",
                        "< 1.0 ms",
                        higher_is_better=False,
                    )  # fmt: skip
                )
                try:
                    one = _wrk_rps([bases["redis-a"]], folder, 16)
                    two = _wrk_rps([bases["redis-a"], bases["redis-b"]], folder, 8)
                    rows.append(Row("/run req/s c=16, 2 replicas vs 1", two, one, "req/s"))
                except RuntimeError as exc:  # e.g. wrk's report unreadable on a starved machine
                    print(f"WARNING: throughput not measured: {exc}")
                question = {"input": "What is 2+3?"}
                check = answer_has("result", "The answer is 5.")
                # The memory gateway hosts the agent and the calculator together; in Redis mode
                # only agent-alone hosts the agent, and its tool calls go to redis-a or redis-b.
                local = _p50_ms(f"{bases['memory']}/services/assistant/run", question, check,
                                AGENT_REQUESTS)  # fmt: skip
                remote = _p50_ms(f"{bases['agent-alone']}/services/assistant/run", question,
                                 check, AGENT_REQUESTS)  # fmt: skip
                rows.append(
                    Row(
                        "agent /run 1 tool call p50: Redis + tool elsewhere vs memory",
                        remote,
                        local,
                        "ms",
                        higher_is_better=False,
                    )  # fmt: skip
                )
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"gw:{namespace}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    return rows


if __name__ == "__main__":
    run_and_print("Redis mode vs the in-memory bus", run)
