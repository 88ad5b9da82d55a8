"""Instructions per request of the real servers under load: callgrind on uvicorn, wrk at c=1.

bench.instructions drives the apps in-process; this serves them as bench.roundtrip does (each in
its own uvicorn process, same options) under `valgrind --tool=callgrind`, and counts only what a
server runs while wrk drives it with one connection: the counters are zeroed after a warm-up
(`callgrind_control -z`) and written out after the measured run (`callgrind_control -d`). So what a
request costs when it comes over a socket (HTTP parsing, the event loop's turns, the collector) is
in, and the machine's noise is out: on a shared 2-core VM the same code's req/s moves by ±15%
from one run to the next, while these counts move by about 1%.

A count is not a time: a path can run fewer instructions and still take longer if it misses the
caches more (seen here: `/run` runs fewer instructions than the bare endpoint and still takes
more CPU per request at c=1). Read both, this and bench.roundtrip.

Needs valgrind and wrk (apt-get install valgrind wrk); takes about two minutes (Python under
valgrind starts slowly).

    python -m bench.served_instructions            # bare, run and tasks
    python -m bench.served_instructions run bare   # some of them
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import (
    Row,
    UvicornApp,
    gateway_app,
    pick_targets,
    print_rows,
    run_wrk,
    serve,
)
from bench.roundtrip import CONFIG, wrk_scripts

TARGETS = ("bare", "run", "tasks")
PATHS = {"bare": "/run", "run": "/services/echo/run", "tasks": "/control_plane/tasks"}
WARM_SECONDS, MEASURED_SECONDS = 5, 15
STARTUP_UNDER_VALGRIND = 240.0  # seconds: imports run ~50x slower


def _app(target: str, folder: Path, output: Path) -> UvicornApp:
    wrapper = ("valgrind", "--tool=callgrind", f"--callgrind-out-file={output}")
    env = {"PYTHONHASHSEED": "0"}
    if target == "bare":
        return UvicornApp(
            target,
            ("bench.roundtrip:bare_app",),
            env,
            ready_path="/run",
            wrapper=wrapper,
            startup_timeout=STARTUP_UNDER_VALGRIND,
        )
    app = gateway_app(target, CONFIG, folder, env)
    return UvicornApp(
        app.name,
        app.target,
        app.env,
        app.ready_path,
        wrapper=wrapper,
        startup_timeout=STARTUP_UNDER_VALGRIND,
    )


def _total(dump: Path) -> int:
    """The instructions a callgrind dump counted (its `summary:` or `totals:` line)."""
    for line in dump.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no total in {dump}")


def per_unit(target: str) -> float:
    """Instructions per request (bare, run) or per task (tasks: a submit and a long-poll)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        output = folder / f"{target}.callgrind"
        script = wrk_scripts(folder)[target]
        path = PATHS[target]
        with serve(folder, _app(target, folder, output)) as bases:
            url, pid = bases[target] + path, str(bases.pids[target])
            run_wrk(url, script, 1, WARM_SECONDS)
            subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
            result = run_wrk(url, script, 1, MEASURED_SECONDS)
            subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
            dumps = sorted(folder.glob(f"{output.name}.*"))  # `-d` writes <file>.<n>
            if not dumps:
                raise RuntimeError(f"callgrind wrote no dump for {target}")
            instructions = _total(dumps[0])
        units = result.completed if target == "tasks" else result.requests
        return instructions / max(units, 1)


def measure(targets: tuple[str, ...] = TARGETS) -> list[Row]:
    with ThreadPoolExecutor(2) as pool:  # counts, not times: two at once is fine
        counts = dict(zip(targets, pool.map(per_unit, targets), strict=True))
    bare = counts.get("bare")
    names = {"bare": "bare endpoint", "run": "/run", "tasks": "tasks + long-poll, per task"}
    rows = []
    for target in targets:
        baseline = None if target == "bare" else bare
        name = names[target] + ("" if baseline is None else " vs bare")
        rows.append(Row(name, counts[target], baseline, "instr/unit", higher_is_better=False))
    return rows


def main(argv: list[str]) -> int:
    missing = [tool for tool in ("valgrind", "callgrind_control", "wrk") if not shutil.which(tool)]
    if missing:
        print(f"missing: {', '.join(missing)} (apt-get install valgrind wrk)", file=sys.stderr)
        return 2
    targets = pick_targets(argv, TARGETS)
    if targets is None:
        return 2
    print_rows("instructions per request of the served apps (callgrind, wrk c=1)", measure(targets))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
