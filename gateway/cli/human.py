"""`human list`, `human answer` and `human inbox`: the questions workflows ask people.

The inbox is the terminal counterpart of a web inbox: it shows the oldest waiting question,
reads the answer, sends it, and when nothing waits it blocks on the gateway's aggregate event
stream until a new question is created (no polling).
"""

from __future__ import annotations

import time
from typing import Any

import click
import httpx
from rich.markup import escape

from gateway.cli.output import Output, age, fail, output_option
from gateway.client_wire import Conflict, NotFound, StreamCursor

FEED = "/control_plane/events"
CLOCK_SLACK = 5.0  # seconds the gateway's clock may be behind ours


@click.group()
def human() -> None:
    """Questions waiting for people (human services)."""


@human.command("list")
@output_option
@click.argument("service", required=False)
@click.pass_obj
def list_(app, service) -> None:
    """Waiting questions, oldest first (of SERVICE, or of every human service)."""
    waiting = app.client.human.pending(service)
    if app.out.json:
        app.out.emit_json(waiting)
        return
    rows = [
        (t["task_id"], t["service"], age(t.get("created_at")), t.get("prompt") or t.get("input"))
        for t in waiting
    ]
    app.out.table(("TASK", "SERVICE", "WAITING", "QUESTION"), rows, "no questions waiting")


@human.command()
@output_option
@click.argument("task_id")
@click.argument("text")
@click.option("--service", help="the human service (found by itself when omitted)")
@click.pass_obj
def answer(app, task_id, text, service) -> None:
    """Answer the waiting question TASK_ID with TEXT."""
    try:
        answered = app.client.human.answer(task_id, text, service=service)
    except Conflict as exc:
        fail(str(exc.detail))
    if app.out.json:
        app.out.emit_json(answered)
    else:
        click.echo(f"answered {task_id}")


def _show(out: Output, question: dict[str, Any], more: int) -> None:
    asked_by = question.get("requested_by") or {}
    origin = f" for {asked_by.get('service')} {asked_by.get('task_id', '')[:8]}" if asked_by else ""
    out.console.print(
        f"\n[bold magenta]?[/bold magenta] [bold]{escape(str(question['service']))}[/bold]"
        f"[dim]{escape(origin)} · {question['task_id']} · "
        f"waiting {age(question.get('created_at'))}"
        f"{f' · {more} more' if more else ''}[/dim]"
    )
    out.console.print(escape(str(question.get("prompt") or question.get("input") or "")))


def _wait_for_question(app, service: str | None, cursor: StreamCursor, since: float) -> None:
    """Block until the gateway reports a new question (or a task starts waiting for one).

    The feed first replays what it holds; entries from before the inbox opened (`since`, with
    slack for clock skew) are history the listing already covered, not news."""
    url = str(httpx.URL(FEED, params={"service": service} if service else None))
    with app.out.stderr.status("[dim]waiting for questions… (Ctrl-C to leave)[/dim]"):
        try:
            for event in app.client.stream(url, cursor):
                news = (event.kind == "human" and event.name == "created") or (
                    event.kind == "status" and event.status == "waiting_for_human"
                )
                if news and (event.at or since) >= since - CLOCK_SLACK:
                    return
        except NotFound:
            pass  # a gateway without the aggregate stream: let the person say when to look
    click.prompt(
        "no questions; press Enter to look again", default="", show_default=False, err=True
    )


@human.command()
@click.argument("service", required=False)
@click.pass_obj
def inbox(app, service) -> None:
    """Answer questions as they arrive (empty answer: skip; Ctrl-C: leave)."""
    out, client = app.out, app.client
    skipped: set[str] = set()
    cursor = StreamCursor()
    opened = time.time()
    try:
        while True:
            waiting = [q for q in client.human.pending(service) if q["task_id"] not in skipped]
            if not waiting:
                _wait_for_question(app, service, cursor, opened)
                continue
            question = waiting[0]
            _show(out, question, len(waiting) - 1)
            text = click.prompt("answer", default="", show_default=False)
            if not text.strip():
                skipped.add(question["task_id"])
                out.console.print("[dim]skipped[/dim]")
                continue
            try:
                client.human.answer(question["task_id"], text, service=question["service"])
                out.console.print(f"[green]answered[/green] {question['task_id']}")
            except (Conflict, NotFound):
                out.console.print("[yellow]already answered or withdrawn[/yellow]")
    except (click.Abort, KeyboardInterrupt, EOFError):
        click.echo("", err=True)
