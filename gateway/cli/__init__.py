"""`agent-gateway`: serve a deployment, run and follow tasks, answer people, look inside.

A thin layer over `gateway.client`: each command is a few client calls and some printing.
Every error a user can cause or meet (a refused connection, 401, an unknown service or task)
ends in one line on stderr and an exit code, never a traceback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import click

from gateway.cli.human import human
from gateway.cli.output import EXIT_FAILED, EXIT_USAGE, Output, fail
from gateway.cli.serve import check, serve
from gateway.cli.sessions import services, sessions
from gateway.cli.tasks import cancel, run, task, tasks
from gateway.client import GatewayClient
from gateway.client_wire import (
    GatewayError,
    NotFound,
    Overloaded,
    TaskFailed,
    Unauthorized,
    Unreachable,
)


@dataclass
class App:
    """What every command gets: where the gateway is, how to print, and a client made on use."""

    url: str
    token: str | None
    out: Output
    _client: GatewayClient | None = field(default=None, repr=False)

    @property
    def client(self) -> GatewayClient:
        if self._client is None:
            self._client = GatewayClient(self.url, self.token)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def _unknown_service_hint(app: App, detail: str) -> str:
    """A 404 about a service gets the list of services that do exist."""
    if not detail.startswith("no service"):
        return detail
    try:
        names = ", ".join(app.client.services()) or "none"
    except GatewayError:
        return detail
    return f"{detail} (services: {names})"


class Root(click.Group):
    """Turns the client's typed errors into one line and an exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except Unreachable as exc:
            fail(f"{exc} — is it running? (agent-gateway serve)", EXIT_FAILED)
        except Unauthorized:
            app = ctx.find_object(App)
            given = app is not None and app.token
            fail(
                "401 unauthorized: the gateway refused the token"
                if given
                else "401 unauthorized: give a token with --token or $AGENT_GATEWAY_TOKEN",
                EXIT_FAILED,
            )
        except NotFound as exc:
            app = ctx.find_object(App)
            detail = str(exc.detail)
            fail(_unknown_service_hint(app, detail) if app else detail, EXIT_USAGE)
        except Overloaded as exc:
            wait = f"; retry in {exc.retry_after:g}s" if exc.retry_after is not None else ""
            fail(f"the gateway is overloaded: {exc.detail}{wait}", EXIT_FAILED)
        except GatewayError as exc:
            fail(
                f"{exc.status} {exc.error}: {exc.detail}",
                EXIT_USAGE if exc.status in (400, 422) else EXIT_FAILED,
            )
        except TaskFailed as exc:
            fail(str(exc), EXIT_FAILED)


@click.group(cls=Root, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--url",
    envvar="AGENT_GATEWAY_URL",
    default="http://127.0.0.1:8000",
    show_default=True,
    help="the gateway ($AGENT_GATEWAY_URL)",
)
@click.option("--token", envvar="AGENT_GATEWAY_TOKEN", help="bearer token ($AGENT_GATEWAY_TOKEN)")
@click.option(
    "--output",
    type=click.Choice(["table", "json"]),
    default=None,
    help="default: table on a terminal, json when piped",
)
@click.version_option(package_name="agent-gateway", prog_name="agent-gateway")
@click.pass_context
def cli(ctx: click.Context, url: str, token: str | None, output: str | None) -> None:
    """Serve agent-gateway deployments and use them from the terminal."""
    app = App(url=url, token=token or None, out=Output(output))
    ctx.obj = app
    ctx.call_on_close(app.close)


for command in (serve, check, run, tasks, task, cancel, human, sessions, services):
    cli.add_command(command)


def main() -> None:
    """The `agent-gateway` console script."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    cli(prog_name="agent-gateway")
