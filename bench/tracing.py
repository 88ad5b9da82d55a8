"""What tracing costs on the `/run` path: off (the default) must cost nothing.

Three gateways serve the echo workflow under uvicorn, driven by the same httpx load generator in
alternating rounds (best round reported, as in `roundtrip`):

- `before`: the code just before tracing was added (`git archive` of the parent of the commit
  that added gateway/observe/tracing.py, or of `$BENCH_TRACING_BASE`): no tracing module, no
  hooks. The baseline of "tracing off".
- `off`: this tree, no `tracing` section: the hooks are there but find tracing off.
- `on`: this tree with `tracing: {enabled: true, exporter: none}`: every span is made (HTTP,
  task, service run) but sent nowhere. Its baseline is `off`.

`off / before` compares this tree with an older one, so it also moves with any other change to
the hot path made since that commit; run it right after such changes land to keep it honest.

    python -m bench.tracing
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path

from bench.common import (
    ROOT,
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
PLAN = [(1, 50, 200), (32, 100, 300)]  # (concurrency, warm-up, measured requests per round)
ROUNDS = 3
CONFIG = (
    "default_service: echo\n"
    "services:\n"
    f"  echo: {{type: workflow, source: '{WORKFLOW}', max_concurrent_tasks: 64}}\n"
)
TRACED = CONFIG + "tracing: {enabled: true, exporter: none}\n"


def base_commit() -> str:
    """The commit just before tracing (or `$BENCH_TRACING_BASE`)."""
    chosen = os.environ.get("BENCH_TRACING_BASE")
    if chosen:
        return chosen
    added = subprocess.run(
        ["git", "log", "--diff-filter=A", "--format=%H", "--", "gateway/observe/tracing.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if not added:
        raise RuntimeError("gateway/observe/tracing.py is not in the git history")
    return f"{added[-1]}^"


def export_tree(commit: str, folder: Path) -> str:
    """`git archive` of `commit` into `folder`; returns its short hash."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit, "gateway", "services", "examples"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return subprocess.run(
        ["git", "rev-parse", "--short", commit], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()


def _measure(url: str, concurrency: int, requests: int) -> Load:
    return run_load(url, PAYLOAD, answer_has("result", "ping"), concurrency, requests)


def _best(urls: dict[str, str], concurrency: int, warmup: int, requests: int) -> dict[str, Load]:
    for url in urls.values():
        _measure(url, concurrency, warmup)
    rounds: dict[str, list[Load]] = {name: [] for name in urls}
    names = list(urls)
    for n in range(ROUNDS):
        for name in names[n % len(names) :] + names[: n % len(names)]:  # rotate the order
            rounds[name].append(_measure(urls[name], concurrency, requests))
    return {name: max(loads, key=lambda r: r.rps) for name, loads in rounds.items()}


def run() -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        old = folder / "before-tracing"
        old.mkdir()
        short = export_tree(base_commit(), old)
        before = gateway_app("before", CONFIG, folder, env={"PYTHONPATH": str(old)})
        before = UvicornApp(
            before.name, ("--app-dir", str(old), *before.target), before.env, before.ready_path
        )
        apps = (before, gateway_app("off", CONFIG, folder), gateway_app("on", TRACED, folder))
        with serve(folder, *apps) as bases:
            urls = {name: base + "/services/echo/run" for name, base in bases.items()}
            for concurrency, warmup, requests in PLAN:
                best = _best(urls, concurrency, warmup, requests)
                c = f"c={concurrency}"
                off, on, old_run = best["off"], best["on"], best["before"]
                rows += [
                    Row(
                        f"tracing off vs before tracing ({short}) {c}",
                        off.rps,
                        old_run.rps,
                        "req/s",
                        "~1.0x (noise)",
                    ),
                    Row(
                        f"tracing off vs before p50 {c}",
                        off.latency_ms(50),
                        old_run.latency_ms(50),
                        "ms",
                        "~1.0x",
                        False,
                    ),
                    Row(f"tracing on vs off {c}", on.rps, off.rps, "req/s", "informational"),
                ]
    return rows


def main() -> None:
    run_and_print("tracing: /run of the echo workflow, tracing off vs absent, on vs off", run)


if __name__ == "__main__":
    main()
