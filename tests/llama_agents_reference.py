"""llama-agents-server's own `WorkflowServer` serving the demo workflows (a test-only peer).

Run as `python -m tests.llama_agents_reference PORT`: the protocol tests send it the same
requests as agent-gateway and compare what a client observes.
"""

from __future__ import annotations

import sys

import uvicorn
from llama_agents.server import WorkflowServer

from examples.approval import workflow as approval
from examples.echo import workflow as echo
from examples.pipeline import build


def main() -> None:
    server = WorkflowServer()
    server.add_workflow("echo", echo)
    server.add_workflow("stats", build())
    server.add_workflow("approval", approval)
    uvicorn.run(server.app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")


if __name__ == "__main__":
    main()
