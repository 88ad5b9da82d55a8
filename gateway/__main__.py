"""`python -m gateway --config PATH [--host H] [--port P] [--reload] [--services a,b]`
(= `agent-gateway serve`)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sys
from pathlib import Path

import uvicorn

from gateway.app import build_app, hosted_services, serving
from gateway.config import CONFIG_ENV, ConfigError, GatewayConfig, build_services, load_config
from gateway.observe.logs import configure_logging, flush_logs


def _stopped_gracefully(signum: int, frame: object) -> None:
    raise SystemExit(0)


def watched_folders(config: GatewayConfig) -> list[str]:
    """What `--reload` watches: the config's folder and the folders of its source modules."""
    folder = Path(config.source_path or ".").resolve().parent
    folders = {folder}
    for entry in config.services.values():
        module = (entry.source or "").partition(":")[0]
        if not module:
            continue
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.origin and spec.origin not in ("built-in", "frozen"):
            folders.add(Path(spec.origin).resolve().parent)
    return sorted(str(f) for f in folders)


def check_redis(config: GatewayConfig) -> None:
    """Fail start-up with one line when the configured Redis does not answer."""
    import anyio

    from gateway.bus import BusUnavailable
    from gateway.bus.redis import check_reachable

    for field, url in (("bus.url", config.bus.url), ("store.url", config.store.url)):
        if url:
            try:
                anyio.run(check_reachable, url)
            except BusUnavailable as exc:
                raise ConfigError(f"{config.source_path}: {field}: {exc}") from None


def serve(
    config_path: str | None = None,
    host: str | None = None,
    port: int | None = None,
    log_level: str = "info",
    reload: bool = False,
    services: str | None = None,
) -> int:
    """Serve a config; 2 with one line on stderr when the config is wrong."""
    configure_logging(log_level)
    try:
        config = load_config(config_path)
        # With --reload the child process builds the app; checking the services here still
        # stops a broken config in one line, without opening the store twice.
        hosted = hosted_services(config, services)
        app = build_services(config) if reload else serving(build_app(config, hosted))
        if config.bus.kind == "redis":
            check_redis(config)
    except ConfigError as exc:
        flush_logs()  # queued warnings first: the error is the last line
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # uvicorn re-raises the signal that stopped it once its graceful shutdown is complete; with
    # the default handler that kills the process (exit -15) although everything ended in order.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, _stopped_gracefully)
    options = dict(
        host=host or config.host,
        port=port or config.port,
        log_level=log_level,
        log_config=None,  # uvicorn's loggers go through ours (queued, never blocking the loop)
        timeout_graceful_shutdown=config.shutdown_grace + 5,
        timeout_keep_alive=config.keep_alive_timeout,  # idle connections are closed
    )
    if not reload:
        uvicorn.run(app, **options)
        return 0
    # The reloader runs the app in a child process that builds it again from $GATEWAY_CONFIG.
    config_file = Path(config.source_path or "config.yaml").resolve()
    os.environ[CONFIG_ENV] = str(config_file)
    if services:
        os.environ["GATEWAY_SERVICES"] = services
    uvicorn.run(
        "gateway.app:app",
        reload=True,
        reload_dirs=watched_folders(config),
        reload_includes=["*.py", config_file.name],
        **options,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    parser.add_argument(
        "--config", default=None, help="YAML file (default: $GATEWAY_CONFIG or config.yaml)"
    )
    parser.add_argument(
        "--host", default=None, help="bind address (default: the config's, 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, default=None, help="port (default: the config's, 8000)")
    parser.add_argument("--log-level", default="info")
    parser.add_argument(
        "--reload", action="store_true", help="restart when the config or its code changes"
    )
    parser.add_argument(
        "--services",
        default=None,
        help="serve only these services (comma-separated; Redis mode, the rest run elsewhere)",
    )
    args = parser.parse_args(argv)
    return serve(args.config, args.host, args.port, args.log_level, args.reload, args.services)


if __name__ == "__main__":
    sys.exit(main())
