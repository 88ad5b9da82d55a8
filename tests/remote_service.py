"""A workflow service in its own process that joins a gateway over HTTP (used by the tests).

`python -m tests.remote_service --name N --source mod:attr --port P --control-plane URL`
registers `N` with the gateway at URL (`.../control_plane`), then serves itself on 127.0.0.1:P;
the gateway delivers tasks to its `/process_message` and it posts results back. With `--trace`
it traces to the console (stdout), continuing the trace each message carries.
"""

from __future__ import annotations

import argparse

import anyio

from gateway.config import import_object
from services.workflow import WorkflowService


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control-plane", required=True)
    parser.add_argument("--trace", action="store_true", help="trace to the console")
    args = parser.parse_args(argv)
    service = WorkflowService(
        service_name=args.name,
        workflow=import_object(args.source),
        host="127.0.0.1",
        port=args.port,
    )
    await service.register_to_control_plane(args.control_plane)
    if args.trace:
        await serve_traced(service, args.port)
    else:
        await service.launch_server(host="127.0.0.1", port=args.port)


async def serve_traced(service: WorkflowService, port: int) -> None:
    """`launch_server`, but with tracing on (exported to stdout)."""
    import uvicorn

    from gateway.app import create_app
    from gateway.config import GatewayConfig, TracingSettings
    from gateway.observe.tracing import setup_tracing
    from gateway.runtime import Runtime

    settings = TracingSettings(enabled=True, exporter="console")
    runtime = Runtime.for_services([service], tracing=setup_tracing(settings, "remote"))
    app = create_app(runtime, GatewayConfig())
    await uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port)).serve()


if __name__ == "__main__":
    anyio.run(main)
