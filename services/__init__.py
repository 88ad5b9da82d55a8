"""The things the gateway hosts: one module (or small package) per service type.

Services may use the gateway's building blocks (`gateway.messages`, `gateway.bus`, `gateway.web`,
`gateway.store`) and get the running control plane through `ServiceHost`; they never import the
assembly (`gateway.app`, `gateway.runtime`, `gateway.config`). The config finds types in `TYPES`.
"""

from __future__ import annotations

from typing import NamedTuple


class ServiceKind(NamedTuple):
    """Where a type's class lives and which field receives the imported `source` object.

    Paths are strings so that reading the table imports no service module (and no llama-index).
    `source_is_callable`: the source is itself the callable served (a component function, a
    human input function), so it is never called as a factory at start-up. `env_defaults`: a
    zero-argument function whose dict fills settings the YAML leaves out.
    """

    class_path: str
    source_field: str
    source_is_callable: bool = False
    env_defaults: str | None = None


TYPES: dict[str, ServiceKind] = {
    "workflow": ServiceKind(
        "services.workflow:WorkflowService",
        "workflow",
        env_defaults="services.workflow:workflow_env_defaults",
    ),
    "agent": ServiceKind("services.agent:AgentService", "agent"),
    "tool": ServiceKind("services.tool.service:ToolService", "tools"),
    "human": ServiceKind("services.human.service:HumanService", "fn_input", True),
    "component": ServiceKind("services.component:ComponentService", "component", True),
}
