"""How the command line prints: tables and plain text on a terminal, JSON when piped.

`--output table|json` overrides the guess. Errors are one line on stderr (`error: ...`).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.table import Table

# Exit codes: how the task ended, or what went wrong before it could.
EXIT_OK = 0
EXIT_FAILED = 1  # the task failed, or the gateway refused / could not be reached
EXIT_USAGE = 2  # bad arguments, or naming a service/task that does not exist
EXIT_TIMED_OUT = 3
EXIT_CANCELLED = 4
EXIT_BY_STATUS = {
    "completed": EXIT_OK,
    "failed": EXIT_FAILED,
    "timed_out": EXIT_TIMED_OUT,
    "cancelled": EXIT_CANCELLED,
}


def output_option(command):
    """`--output` after the command name too (`agent-gateway tasks --output json`)."""

    def override(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        if value is not None and ctx.obj is not None:
            ctx.obj.out = Output(value)

    return click.option(
        "--output",
        type=click.Choice(["table", "json"]),
        default=None,
        expose_value=False,
        callback=override,
        help="table or json (default: table on a terminal, json when piped)",
    )(command)


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print one line on stderr and leave with `code` (never a traceback)."""
    click.echo(f"error: {message}", err=True)
    raise click.exceptions.Exit(code)


class Output:
    def __init__(self, mode: str | None) -> None:
        self.is_terminal = sys.stdout.isatty()
        self.json = mode == "json" or (mode is None and not self.is_terminal)
        self.console = Console(highlight=False, soft_wrap=True)
        self.stderr = Console(stderr=True, highlight=False, soft_wrap=True)

    def emit_json(self, value: Any, compact: bool = False) -> None:
        text = json.dumps(value, ensure_ascii=False, indent=None if compact else 2, default=str)
        click.echo(text)

    def value(self, value: Any) -> None:
        """A result, plainly: text as it is, anything else as indented JSON."""
        if isinstance(value, str):
            click.echo(value)
        else:
            self.emit_json(value)

    def table(self, columns: Sequence[str], rows: Iterable[Sequence[Any]], empty: str) -> None:
        rows = list(rows)
        if not rows:
            self.console.print(f"[dim]{empty}[/dim]")
            return
        table = Table(*columns, box=None, header_style="bold", pad_edge=False)
        for row in rows:
            table.add_row(*("" if cell is None else str(cell) for cell in row))
        self.console.print(table)

    def fields(self, pairs: Iterable[tuple[str, Any]]) -> None:
        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold")
        table.add_column()
        for key, value in pairs:
            if value is None:
                continue
            if not isinstance(value, str):
                value = json.dumps(value, ensure_ascii=False, indent=2, default=str)
            table.add_row(key, value)
        self.console.print(table)


def age(timestamp: float | None) -> str:
    """`12s`, `5m`, `3h`, `2d` ago."""
    if not timestamp:
        return ""
    seconds = max(0.0, time.time() - timestamp)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def duration(record: dict[str, Any]) -> str:
    start, end = record.get("started_at"), record.get("finished_at")
    if not start:
        return ""
    return f"{(end or time.time()) - start:.2f}s"


def items(page: Any, *keys: str) -> list[Any]:
    """The rows of a list answer: `{"items": [...]}` (or an older key), or a bare list."""
    if isinstance(page, list):
        return page
    for key in ("items", *keys):
        if isinstance(page, dict) and isinstance(page.get(key), list):
            return page[key]
    return []
