"""`run`, `tasks`, `task` and `cancel`: submit work, follow it, look at it, stop it."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import click

from gateway.cli.follow import LiveView, describe, follow
from gateway.cli.output import (
    EXIT_BY_STATUS,
    EXIT_FAILED,
    EXIT_USAGE,
    Output,
    age,
    duration,
    fail,
    items,
    output_option,
)
from gateway.client_wire import Conflict, ResultEvent, result_value

STATUSES = ("pending", "running", "waiting_for_human", "waiting_for_input") + tuple(EXIT_BY_STATUS)


def parse_inputs(args: tuple[str, ...], json_text: str | None) -> tuple[str | None, dict]:
    """`key=value` words become kwargs (values read as JSON when they are JSON); other words
    are the text input (for agents and people). `--json` gives the kwargs as one object."""
    kwargs: dict[str, Any] = {}
    if json_text is not None:
        try:
            kwargs = json.loads(json_text)
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--json") from None
        if not isinstance(kwargs, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--json")
    words: list[str] = []
    for arg in args:
        key, eq, raw = arg.partition("=")
        if not eq or not key.isidentifier():
            words.append(arg)
            continue
        try:
            kwargs[key] = json.loads(raw)
        except ValueError:
            kwargs[key] = raw
    if words and kwargs:
        raise click.UsageError("give either key=value arguments or a text input, not both")
    return (" ".join(words) if words else None), kwargs


def _print_outcome(out: Output, record: dict[str, Any]) -> int:
    status = str(record.get("status"))
    code = EXIT_BY_STATUS.get(status, EXIT_FAILED)
    if out.json:
        out.emit_json(record)
        return code
    if status == "completed":
        out.value(result_value(record))
    else:
        message = record.get("error") or status.replace("_", " ")
        out.stderr.print(f"[red]{status}[/red]: {message}", markup=True, highlight=False)
    return code


def _interrupted(out: Output, client: Any, task_id: str) -> int:
    """Ctrl-C: ask whether to cancel the task or leave it running."""
    if not (out.is_terminal and click.get_text_stream("stdin").isatty()):
        click.echo(f"detached; task {task_id} keeps running", err=True)
        return 130
    try:
        choice = click.prompt(
            f"\nTask {task_id} is still running. [c]ancel it or [d]etach?",
            type=click.Choice(["c", "d", "cancel", "detach"]),
            default="d",
            show_choices=False,
            err=True,
        )
    except click.Abort:
        choice = "d"
    if choice.startswith("d"):
        click.echo(f"detached; follow it with: agent-gateway task {task_id} --events", err=True)
        return 0
    with contextlib.suppress(Conflict):  # it ended meanwhile: report how
        client.cancel(task_id)
    return _print_outcome(out, client.wait(task_id))


@click.command()
@output_option
@click.argument("service")
@click.argument("args", nargs=-1)
@click.option("--json", "json_text", metavar="OBJECT", help="run kwargs as one JSON object")
@click.option("--session", "session_id", metavar="ID", help="run in this session")
@click.option(
    "--follow/--no-follow",
    "live",
    default=None,
    help="show events live (default: on a terminal)",
)
@click.pass_obj
def run(app, service, args, json_text, session_id, live) -> None:
    """Run SERVICE and print its result.

    ARGS are key=value run kwargs (values are read as JSON: n=3, tags='["a"]', else text), or
    a text input for an agent. Exit code: 0 completed, 1 failed, 3 timed out, 4 cancelled.
    """
    text, kwargs = parse_inputs(args, json_text)
    out, client = app.out, app.client
    if live is None:
        live = out.is_terminal and not out.json
    task = client.submit(service, text, session_id=session_id, **kwargs)
    try:
        if live and out.is_terminal:
            with LiveView(out.stderr, task.task_id, task.service or service) as view:
                record = follow(view, task.events())
            record = record if record and record.get("status") else task.wait()
        elif live:
            record = {}
            for event in task.events():  # piped: the events as JSON lines, the result last
                out.emit_json(event.model_dump(exclude_none=True), compact=True)
                if isinstance(event, ResultEvent):
                    record = event.record
            raise click.exceptions.Exit(EXIT_BY_STATUS.get(str(record.get("status")), 1))
        else:
            record = task.wait()
    except KeyboardInterrupt:
        raise click.exceptions.Exit(_interrupted(out, client, task.task_id)) from None
    raise click.exceptions.Exit(_print_outcome(out, record))


@click.command()
@output_option
@click.option("--service", help="only this service's tasks")
@click.option("--status", type=click.Choice(STATUSES), help="only tasks in this status")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
@click.pass_obj
def tasks(app, service, status, limit) -> None:
    """List recent tasks."""
    page = app.client.tasks(service=service, status=status, limit=limit)
    if app.out.json:
        app.out.emit_json(page)
        return
    rows = [
        (t["task_id"], t.get("service"), t.get("status"), age(t.get("created_at")), duration(t))
        for t in items(page, "tasks")
    ]
    app.out.table(("TASK", "SERVICE", "STATUS", "AGE", "TOOK"), rows, "no tasks")


@click.command()
@output_option
@click.argument("task_id")
@click.option("--events", is_flag=True, help="print its events (and follow them until it ends)")
@click.pass_obj
def task(app, task_id, events) -> None:
    """Show one task: status, input, result or error."""
    out, client = app.out, app.client
    record = client.task(task_id)
    if events:
        try:
            for event in client.events(task_id):
                if out.json:
                    out.emit_json(event.model_dump(exclude_none=True), compact=True)
                elif event.kind != "result" and (line := describe(event)) is not None:
                    out.console.print(line)
        except KeyboardInterrupt:
            raise click.exceptions.Exit(130) from None
        if out.json:
            return
        record = client.task(task_id)
    if out.json:
        out.emit_json(record)
        return
    ended = record.get("status") in EXIT_BY_STATUS
    result = result_value(record) if record.get("status") == "completed" else None
    out.fields(
        [
            ("task", record.get("task_id")),
            ("service", record.get("service")),
            ("session", record.get("session_id")),
            ("status", record.get("status")),
            ("input", record.get("input") or None),
            ("result", result),
            ("error", record.get("error")),
            ("age", age(record.get("created_at"))),
            ("took", duration(record) if ended else None),
        ]
    )


@click.command()
@output_option
@click.argument("task_id")
@click.pass_obj
def cancel(app, task_id) -> None:
    """Cancel a task that has not ended."""
    try:
        record = app.client.cancel(task_id)
    except Conflict as exc:
        fail(str(exc.detail), EXIT_USAGE)
    if app.out.json:
        app.out.emit_json(record)
    else:
        click.echo(f"{task_id}: {record.get('status')}")
