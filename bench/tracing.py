"""What tracing costs on the `/run` path: off (the default) must cost nothing.

Three variants each run `POST /services/echo/run` in-process (httpx.ASGITransport, the whole
app: middleware, control plane, bus, service, workflow), in a fresh subprocess of their own:

- `before`: the code just before tracing was added (`git archive` of the parent of the commit
  that added gateway/observe/tracing.py, or of `$BENCH_TRACING_BASE`): no tracing module, no
  hooks. The baseline of "tracing off".
- `off`: this tree, no `tracing` section: the hooks are there and find tracing off.
- `on`: this tree with `tracing: {enabled: true, exporter: none}`: every span is made (HTTP,
  task, service run, llama-index's workflow spans) but sent nowhere. Its baseline is `off`.

The figure is CPU time per request (`time.process_time`), the lowest of several batches: on a
shared machine wall-clock time mostly measures the neighbours, CPU time measures the work.
Variants alternate over ROUNDS rounds. `off / before` compares this tree with an older one, so
it also moves with any other change to the hot path made since that commit.

    python -m bench.tracing
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from bench.common import ROOT, Row, run_and_print

ROUNDS = 2
WARMUP, BATCHES, BATCH = 150, 4, 150
CONFIG = {
    "default_service": "echo",
    "services": {
        "echo": {
            "type": "workflow",
            "source": "examples.echo:workflow",
            "max_concurrent_tasks": 64,
        }
    },
}
TRACED = {**CONFIG, "tracing": {"enabled": True, "exporter": "none"}}

# Runs in the variant's subprocess; prints the best batch's CPU microseconds per request.
DRIVER = """
import sys, time, anyio, httpx
from gateway.app import build_app
from gateway.config import parse_config

async def main(config, warmup, batches, size):
    app = build_app(parse_config(config))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            async def once():
                r = await client.post("/services/echo/run", json={"kwargs": {"message": "ping"}})
                if r.json().get("result") != "ping":
                    raise RuntimeError(r.text)
            for _ in range(warmup):
                await once()
            best = float("inf")
            for _ in range(batches):
                started = time.process_time()
                for _ in range(size):
                    await once()
                best = min(best, (time.process_time() - started) / size)
    print(best * 1e6)

anyio.run(main, eval(sys.argv[1]), *map(int, sys.argv[2:]))
"""


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
    """`git archive` of `commit`'s code into `folder`; returns its short hash."""
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


def cpu_per_run(tree: Path, config: dict) -> float:
    """CPU microseconds per `/run`, measured in a fresh process importing the code of `tree`."""
    out = subprocess.run(
        [sys.executable, "-c", DRIVER, repr(config), str(WARMUP), str(BATCHES), str(BATCH)],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree), "GATEWAY_SECRET": "bench"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if out.returncode != 0:
        raise RuntimeError(f"bench driver failed in {tree}:\n{out.stderr}")
    return float(out.stdout.split()[-1])


def import_problem(tree: Path) -> str | None:
    """Why the code of `tree` cannot run in this environment (an old tree may need packages
    this one no longer installs), or None."""
    out = subprocess.run(
        [sys.executable, "-c", "import gateway.app"],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree), "GATEWAY_SECRET": "bench"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    if out.returncode == 0:
        return None
    lines = out.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit status {out.returncode}"


def run() -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp)
        short = export_tree(base_commit(), old)
        variants = {"before": (old, CONFIG), "off": (ROOT, CONFIG), "on": (ROOT, TRACED)}
        problem = import_problem(old)
        if problem is not None:  # still measure on vs off, and say why the other row is gone
            print(f"warning: the tree before tracing ({short}) does not import here: {problem}")
            print("warning: `tracing off vs before tracing` is left out")
            del variants["before"]
        samples: dict[str, list[float]] = {name: [] for name in variants}
        names = list(variants)
        for n in range(ROUNDS):
            for name in names[n % len(names) :] + names[: n % len(names)]:
                samples[name].append(cpu_per_run(*variants[name]))
    best = {name: min(values) for name, values in samples.items()}
    rows = [Row("/run CPU, tracing on vs off", best["on"], best["off"], "µs/req", "", False)]
    if "before" in best:
        rows.insert(
            0,
            Row(
                f"/run CPU, tracing off vs before tracing ({short})",
                best["off"],
                best["before"],
                "µs/req",
                "~1.00x (free when off)",
                False,
            ),
        )
    return rows


def main() -> None:
    run_and_print("tracing: CPU per /run of the echo workflow (in-process)", run)


if __name__ == "__main__":
    main()
