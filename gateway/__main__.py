"""`python -m gateway --config PATH [--host H] [--port P]`."""

from __future__ import annotations

import argparse
import signal
import sys

import uvicorn

from gateway.app import build_app
from gateway.config import ConfigError, load_config
from gateway.observe.logs import configure_logging


def _stopped_gracefully(signum: int, frame: object) -> None:
    raise SystemExit(0)


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
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        config = load_config(args.config)
        app = build_app(config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # uvicorn re-raises the signal that stopped it once its graceful shutdown is complete; with
    # the default handler that kills the process (exit -15) although everything ended in order.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, _stopped_gracefully)
    uvicorn.run(
        app,
        host=args.host or config.host,
        port=args.port or config.port,
        log_level=args.log_level,
        log_config=None,  # uvicorn's loggers go through ours (queued, never blocking the loop)
        timeout_graceful_shutdown=config.shutdown_grace + 5,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
