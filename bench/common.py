"""Shared pieces of the benchmarks: result rows, the summary table, latency statistics."""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass
class Row:
    """One figure, its same-run baseline and the ratio (figure / baseline)."""

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
                row.goal,
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
