"""Remote services: who may use the internal endpoints, and where the gateway may send messages.

Services in other processes use three endpoints (`/control_plane/services/register`,
`/deregister`, `/process_message`) and receive messages at their own `/process_message`. Those
are not user endpoints: they need a service token (`remote_services: {tokens_env: ...}`), never
a user's bearer token, and without that setting remote services are off. A token is also the
service's identity: a service registered with one token can only be replaced, deregistered or
have its tasks' results posted by a holder of the same token, and the gateway presents that
token when it delivers messages to the service.

A registered address is validated (a hostname or an IP literal; a port; a path-only prefix),
must be on the `allow` list (IP networks, or exact hostnames, which are not resolved here), and
becomes a URL through httpx's URL API, so no part of it can smuggle in another host or path.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NoReturn

import httpx
from starlette.datastructures import Headers

from gateway.messages import (
    CONTROL_PLANE_NAME,
    ActionTypes,
    QueueMessage,
    ServiceDefinition,
    TaskEvent,
    TaskResult,
)
from gateway.web.errors import ApiError

logger = logging.getLogger("gateway.control_plane.remote")

if TYPE_CHECKING:
    from gateway.control_plane.plane import ControlPlane

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_ALLOW = ("127.0.0.1", "::1")
TURN_ON = (
    "remote services are off in this gateway; to turn them on, add "
    '`remote_services: {tokens_env: GATEWAY_SERVICE_TOKENS, allow: ["127.0.0.1"]}` to the '
    "config and give each remote service one of those tokens"
)

_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*\.?$")
_PREFIX = re.compile(r"^(/[A-Za-z0-9_.~\-]+)*$")


CONTROL_PLANE_INTERNAL = (
    "/control_plane/services/register",
    "/control_plane/services/deregister",
    "/control_plane/process_message",
)


def remote_publisher(service: str) -> str:
    """The publisher id the gateway gives messages a remote service posts (never its own)."""
    return f"remote:{service}"


def internal_paths(services: Iterable[Any]) -> tuple[str, ...]:
    """The internal endpoints: the control plane's three, and every service's /process_message."""
    return (*CONTROL_PLANE_INTERNAL, *(f"{s.mount_prefix}/process_message" for s in services))


def bearer(headers: Headers) -> bytes | None:
    """The one bearer credential of a request; several Authorization headers are refused (400)."""
    values = headers.getlist("authorization")
    if len(values) > 1:
        raise ApiError(400, "several Authorization headers; send exactly one")
    if not values:
        return None
    scheme, _, presented = values[0].partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return None
    return presented.strip().encode()


def parse_host(host: str) -> IPAddress | str:
    """An IP literal (IPv6 with or without brackets) or a DNS hostname; anything else is 422."""
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if len(text) > 253 or not _HOSTNAME.match(text):
        raise ApiError(
            422,
            f"host {host[:100]!r} is not a hostname or an IP address (no scheme, user, port, "
            "path, query or fragment)",
        )
    return text.lower().rstrip(".")


class RemoteAccess:
    """Service tokens and the allow list of one gateway (None tokens: remote services are off)."""

    def __init__(self, tokens: Iterable[str] | None, allow: Iterable[str] = DEFAULT_ALLOW) -> None:
        self.tokens = [t.encode() for t in tokens or () if t]
        self.networks: list[IPNetwork] = []
        self.hostnames: set[str] = set()
        for entry in allow:
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.hostnames.add(str(parse_host(entry)))

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)

    def identify(self, headers: Headers) -> str:
        """Which service token the request presents ("token-N"); 403 when off, 401 when wrong."""
        if not self.enabled:
            raise ApiError(403, TURN_ON)
        presented = bearer(headers)
        found = None
        for index, token in enumerate(self.tokens):  # every token compared: constant time
            if presented is not None and hmac.compare_digest(presented, token):
                found = index
        if found is None:
            raise ApiError(
                401,
                "a service token is required (Authorization: Bearer <one of the tokens in "
                "remote_services.tokens_env>); user tokens are not accepted here",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return f"token-{found}"

    def token_of(self, owner: str) -> str:
        return self.tokens[int(owner.removeprefix("token-"))].decode()

    def allowed(self, host: IPAddress | str) -> bool:
        if isinstance(host, str):
            return host in self.hostnames
        return any(host in network for network in self.networks)

    def url_for(self, definition: ServiceDefinition) -> httpx.URL:
        """The `/process_message` URL of a registering service, or 422/403 saying why not."""
        if not definition.host:
            raise ApiError(422, "a remote service needs `host` (and usually `port`)")
        host = parse_host(definition.host)
        port = definition.port
        if port is not None and not 1 <= port <= 65535:
            raise ApiError(422, f"port {port} is not between 1 and 65535")
        prefix = (definition.prefix or "").rstrip("/")
        if not _PREFIX.match(prefix) or any(p in (".", "..") for p in prefix.split("/")):
            raise ApiError(
                422,
                f"prefix {prefix[:100]!r} must be a URL path: /segments of letters, digits, "
                "'_', '.', '~' or '-' (no query, fragment, '..' or escapes)",
            )
        if not self.allowed(host):
            raise ApiError(
                403,
                f"host {str(host)!r} is not in remote_services.allow; add it (or its network) "
                "to let a service register there",
            )
        return httpx.URL(scheme="http", host=str(host), port=port, path=f"{prefix}/process_message")


# What a remote service may post, by recipient: its tasks' reports to the control plane, tool
# calls and their answers to other services. NEW_TASK, CANCEL_TASK and SEND_EVENT come only from
# the control plane (a task is created through the task API, where it is tracked and bounded).
TO_CONTROL_PLANE = frozenset({ActionTypes.COMPLETED_TASK, ActionTypes.TASK_STREAM})
TO_SERVICES = frozenset({ActionTypes.NEW_TOOL_CALL, ActionTypes.COMPLETED_TOOL_CALL})


async def accept_remote_message(cp: ControlPlane, message: QueueMessage, owner: str) -> None:
    """Check a message posted by a remote service holding token `owner`, then publish it."""
    allowed = TO_CONTROL_PLANE if message.type == CONTROL_PLANE_NAME else TO_SERVICES
    if message.action not in allowed:
        where = "the control plane" if message.type == CONTROL_PLANE_NAME else "a service"
        action = getattr(message.action, "value", message.action)
        _refuse(403, f"a remote service may not post {action!r} to {where}", message)
    if message.type == CONTROL_PLANE_NAME:
        try:
            if message.action == ActionTypes.COMPLETED_TASK:
                result = TaskResult.model_validate(message.data)
                task_id, status = result.task_id, result.status
            else:
                task_id, status = TaskEvent.model_validate(message.data).task_id, None
        except ValueError as exc:
            _refuse(422, f"malformed {message.action!r} data: {exc}", message)
        record = cp.tasks.get(task_id)
        entry = cp.registry.get(record.service) if record is not None else None
        if record is not None and (entry is None or entry.owner != owner):
            _refuse(403, f"task {task_id!r} was not dispatched to a service of this token", message)
        # From here on it speaks as the service the task went to, and the plane checks the rest.
        message.publisher_id = remote_publisher(record.service) if record is not None else None
        problem = cp.result_problem(task_id, message.publisher_id, status)
        if problem is not None:
            _refuse(*problem, message)
    elif not cp.bus.has_consumer(message.type):
        raise ApiError(404, f"no consumer is registered for message type {message.type!r}")
    await cp.bus.publish(message)


def _refuse(status: int, detail: str, message: QueueMessage) -> NoReturn:
    logger.warning(
        "refused a remote %s message (type %s): %s",
        getattr(message.action, "value", message.action),
        message.type,
        detail,
    )
    raise ApiError(status, detail)
