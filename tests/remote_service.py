"""A workflow service in its own process that joins a gateway over HTTP (used by the tests).

`python -m tests.remote_service --name N --source mod:attr --port P --control-plane URL`
registers `N` with the gateway at URL (`.../control_plane`), then serves itself on 127.0.0.1:P;
the gateway delivers tasks to its `/process_message` and it posts results back.
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
    args = parser.parse_args(argv)
    service = WorkflowService(
        service_name=args.name,
        workflow=import_object(args.source),
        host="127.0.0.1",
        port=args.port,
    )
    await service.register_to_control_plane(args.control_plane)
    await service.launch_server(host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    anyio.run(main)
