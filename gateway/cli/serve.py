"""`serve` and `check`: the server side of the command line (they read the config file)."""

from __future__ import annotations

import click

from gateway.cli.output import EXIT_USAGE, fail, output_option
from gateway.observe.logs import flush_logs

CONFIG_HELP = "YAML file (default: $GATEWAY_CONFIG or config.yaml)"


@click.command()
@click.option("--config", "config_path", metavar="FILE", help=CONFIG_HELP)
@click.option("--host", help="bind address (default: the config's, 127.0.0.1)")
@click.option("--port", type=click.IntRange(1, 65535), help="port (default: the config's, 8000)")
@click.option("--reload", is_flag=True, help="restart when the config or its source modules change")
@click.option("--log-level", default="info", show_default=True)
@click.option(
    "--services",
    metavar="A,B",
    help="serve only these services (Redis mode; the others run in other processes)",
)
def serve(config_path, host, port, reload, log_level, services) -> None:
    """Serve a deployment (what `python -m gateway` does)."""
    from gateway.__main__ import serve as run_server

    raise click.exceptions.Exit(run_server(config_path, host, port, log_level, reload, services))


@click.command()
@output_option
@click.option("--config", "config_path", metavar="FILE", help=CONFIG_HELP)
@click.pass_obj
def check(app, config_path) -> None:
    """Validate a config without serving: import every source, list services and routes."""
    from gateway.config import ConfigError, build_services, load_config

    try:
        config = load_config(config_path)
        built = build_services(config)
    except ConfigError as exc:
        flush_logs()  # queued warnings first: the error is the last line
        fail(str(exc), EXIT_USAGE)
    report = []
    for service in built:
        entry = config.services[service.service_name]
        prefix = entry.prefix or f"/services/{service.service_name}"
        routes = [
            (",".join(sorted(set(getattr(r, "methods", None) or ()) - {"HEAD"})), prefix + r.path)
            for r in service.routes()
        ]
        report.append((service.service_name, service.service_type, prefix, routes))
    if app.out.json:
        app.out.emit_json(
            {
                "config": config.source_path,
                "services": [
                    {"name": n, "type": t, "prefix": p, "routes": [f"{m} {u}" for m, u in r]}
                    for n, t, p, r in report
                ],
            }
        )
        return
    console = app.out.console
    console.print(f"[green]ok[/green] {config.source_path}: {len(report)} services")
    for name, kind, prefix, routes in report:
        console.print(f"\n[bold]{name}[/bold] [dim]({kind})[/dim] {prefix}")
        for methods, url in routes:
            console.print(f"  {methods:<6} {url}")
