"""`python -m bench`: run every benchmark module of this folder, then one summary table.

A module is a benchmark when it exposes `run() -> list[Row]`. The usual ones go first
(roundtrip, tool_roundtrip, human_tasks); any other `bench/*.py` with `run()` follows in name
order. A module that is missing is skipped; one that fails is reported and the others still run
(the exit status is then 1).
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

from bench.common import Row, format_table, print_rows

FIRST = ("roundtrip", "tool_roundtrip", "human_tasks")
NOT_BENCHMARKS = {"__init__", "__main__", "common"}


def module_names() -> list[str]:
    present = {p.stem for p in Path(__file__).resolve().parent.glob("*.py")} - NOT_BENCHMARKS
    return [name for name in FIRST if name in present] + sorted(present - set(FIRST))


def main() -> int:
    started = time.monotonic()
    summary: list[Row] = []
    failed: list[str] = []
    for name in module_names():
        try:
            module = importlib.import_module(f"bench.{name}")
        except Exception:
            failed.append(name)
            print(f"\n== {name}: cannot import\n{traceback.format_exc()}", file=sys.stderr)
            continue
        run = getattr(module, "run", None)
        if not callable(run):
            continue
        began = time.monotonic()
        try:
            rows = run()
        except Exception:
            failed.append(name)
            print(f"\n== {name}: failed\n{traceback.format_exc()}", file=sys.stderr)
            continue
        print_rows(f"{name} ({time.monotonic() - began:.1f} s)", rows)
        summary += [
            row if row.name.startswith(name) else replace(row, name=f"{name}: {row.name}")
            for row in rows
        ]
    print(f"\n== summary: {len(summary)} figures in {time.monotonic() - started:.1f} s")
    print(format_table(summary))
    missed = [row.name for row in summary if row.met is False]
    goals = sum(1 for row in summary if row.goal)
    print(
        f"\ngoals: {goals - len(missed)} ok, {len(missed)} MISSED"
        + (f" ({'; '.join(missed)})" if missed else "")
    )
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
