"""`sessions new|list|show|delete` and `services`: what the gateway holds and serves."""

from __future__ import annotations

import click

from gateway.cli.output import age, items, output_option
from gateway.client_wire import NotFound


@click.group(invoke_without_command=True)
@output_option
@click.pass_context
def sessions(ctx) -> None:
    """Sessions: state and history shared by a series of tasks (default: list)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_)


@sessions.command()
@output_option
@click.pass_obj
def new(app) -> None:
    """Create a session and print its id."""
    session_id = app.client.sessions.create()
    if app.out.json:
        app.out.emit_json({"session_id": session_id})
    else:
        click.echo(session_id)


@sessions.command("list")
@output_option
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.pass_obj
def list_(app, limit) -> None:
    """Sessions, newest first where the gateway pages them."""
    client = app.client
    try:
        rows = items(client.request("GET", "/control_plane/sessions/list", params={"limit": limit}))
    except NotFound:  # a gateway without the paged list: the reference's id -> session map
        rows = list(client.sessions.list(limit).values())
    if app.out.json:
        app.out.emit_json(rows)
        return
    table = [
        (s.get("session_id"), len(s.get("task_ids") or []), age(s.get("created_at"))) for s in rows
    ]
    app.out.table(("SESSION", "TASKS", "AGE"), table, "no sessions")


@sessions.command()
@output_option
@click.argument("session_id")
@click.pass_obj
def show(app, session_id) -> None:
    """One session: its tasks in order and its state."""
    session = app.client.sessions.get(session_id)
    if app.out.json:
        app.out.emit_json(session)
        return
    app.out.fields(
        [
            ("session", session.get("session_id")),
            ("tasks", "\n".join(session.get("task_ids") or []) or "none"),
            ("state", session.get("state") or {}),
        ]
    )


@sessions.command()
@output_option
@click.argument("session_id")
@click.pass_obj
def delete(app, session_id) -> None:
    """Delete a session and its saved state."""
    answer = app.client.sessions.delete(session_id)
    if app.out.json:
        app.out.emit_json(answer)
    else:
        click.echo(f"deleted {session_id}")


@click.command()
@output_option
@click.pass_obj
def services(app) -> None:
    """The services this gateway serves."""
    found = app.client.services()
    if app.out.json:
        app.out.emit_json(found)
        return
    rows = [
        (name, d.get("type"), d.get("prefix"), d.get("description")) for name, d in found.items()
    ]
    app.out.table(("SERVICE", "TYPE", "PREFIX", "DESCRIPTION"), rows, "no services")
