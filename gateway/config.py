"""The deployment file: YAML -> validated `GatewayConfig` -> service objects.

Every problem (unknown key, wrong type, missing file, import failure, unknown default_service,
duplicate prefix, a service refusing its settings) raises `ConfigError` with one message that
names the file, the service and what is wrong, so start-up stops with something readable.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from gateway.collector import GEN0_THRESHOLD
from gateway.web.errors import readable
from services import TYPES

CONFIG_ENV = "GATEWAY_CONFIG"
DEFAULT_CONFIG = "config.yaml"

# Paths the gateway itself serves: a service prefix equal to one of them, or under it, would
# shadow it (or be shadowed by it).
BUILT_IN_PATHS = (
    "/control_plane",
    "/docs",
    "/openapi.json",
    "/metrics",
    "/healthz",
    "/readyz",
    "/ui",
)


# The llama-agents protocol's top-level paths (under its prefix).
LLAMA_AGENTS_ROOTS = ("/workflows", "/results", "/handlers", "/events", "/health")


class ConfigError(Exception):
    """Start-up stops with this message."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- service entries ------------------------------------------------------------------------------
class ServiceEntry(_Strict):
    """Settings every service type accepts."""

    source: str | None = Field(
        default=None, description="module:attr of the object (or zero-argument factory) served"
    )
    prefix: str | None = Field(default=None, pattern=r"^/[A-Za-z0-9_./\-]*[A-Za-z0-9_\-]$")
    description: str | None = None
    running: bool | None = None
    max_concurrent_tasks: int | None = Field(default=None, ge=1)
    max_queued_tasks: int | None = Field(default=None, ge=1)
    timeout: float | None = Field(default=None, gt=0)
    raise_exceptions: bool | None = None
    step_interval: float | None = Field(default=None, ge=0)


class WorkflowEntry(ServiceEntry):
    type: Literal["workflow"]
    source: str
    human_service: str | None = None
    internal_host: str | None = None
    internal_port: int | None = None


class AgentEntry(ServiceEntry):
    type: Literal["agent"]
    source: str
    tools: list[str] = Field(default_factory=list)
    tool_timeout: float | None = Field(default=None, gt=0)
    max_cached_sessions: int | None = Field(default=None, ge=1)


class ToolEntry(ServiceEntry):
    type: Literal["tool"]
    source: str
    max_concurrent_calls: int | None = Field(default=None, ge=1)


class HumanEntry(ServiceEntry):
    type: Literal["human"]
    human_input_prompt: str | None = None


class ComponentEntry(ServiceEntry):
    type: Literal["component"]
    source: str


class CustomEntry(ServiceEntry):
    """Your own BaseService subclass (or a factory returning an instance)."""

    type: Literal["custom"]
    source: str
    options: dict[str, Any] = Field(default_factory=dict)


AnyEntry = Annotated[
    WorkflowEntry | AgentEntry | ToolEntry | HumanEntry | ComponentEntry | CustomEntry,
    Field(discriminator="type"),
]


SERVICE_CLASSES = TYPES


ENTRY_TAGS = frozenset(SERVICE_CLASSES) | {"custom"}


# -- gateway sections -----------------------------------------------------------------------------
class BusSettings(_Strict):
    kind: Literal["memory", "redis"] = "memory"
    buffer_size: int = Field(default=1024, ge=1)
    publish_timeout: float = Field(default=1.0, ge=0)
    url: str = Field(default="redis://127.0.0.1:6379/0", pattern=r"^rediss?://")
    namespace: str = Field(default="gateway", pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    claim_idle: float = Field(
        default=15.0, gt=0, description="seconds before a dead replica's task is taken over"
    )
    max_deliveries: int = Field(default=3, ge=1)


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}


def _duration(value: Any) -> Any:
    """Seconds, or a string like `90s`, `15m`, `12h`, `7d`."""
    if isinstance(value, str) and value.strip()[-1:] in _DURATION_UNITS:
        number = value.strip()[:-1].strip()
        try:
            return float(number) * _DURATION_UNITS[value.strip()[-1]]
        except ValueError:
            raise ValueError(f"{value!r} is not a duration (e.g. 90s, 15m, 12h, 7d)") from None
    return value


Duration = Annotated[float, BeforeValidator(_duration), Field(gt=0)]


class RetainSettings(_Strict):
    """Finished tasks kept in the sqlite file (null turns a limit off); sessions, their saved
    contexts and unfinished tasks are never removed by it."""

    max_age: Duration | None = Field(default=7 * 86_400.0, description="seconds or 7d/12h/15m/90s")
    max_tasks: int | None = Field(default=100_000, ge=0)
    sweep_every: Duration = Field(default=60.0, description="seconds between retention sweeps")


class StoreSettings(_Strict):
    kind: Literal["memory", "sqlite", "redis"] = "memory"
    path: str = "gateway.db"
    retain: RetainSettings = Field(default_factory=RetainSettings)
    url: str | None = Field(default=None, pattern=r"^rediss?://")


class EventSettings(_Strict):
    replay_size: int = Field(
        default=256, ge=1, description="latest events held per task (late readers, resume)"
    )
    feed_size: int = Field(
        default=1024, ge=1, description="latest entries held by GET /control_plane/events"
    )
    subscriber_buffer: int | None = Field(
        default=None, ge=1, description="no longer used: readers read the replay itself"
    )


class AuthSettings(_Strict):
    tokens_env: str = Field(description="env variable holding comma-separated bearer tokens")


class LlamaAgentsProtocol(_Strict):
    enabled: bool = True
    prefix: str = Field(
        default="",
        pattern=r"^(/[A-Za-z0-9_.\-]+)*$",
        description="where its routes live; empty = at the root, where WorkflowClient expects them",
    )


class UiSettings(_Strict):
    enabled: bool = Field(default=True, description="serve the web console at /ui")


class ProtocolSettings(_Strict):
    llama_agents: LlamaAgentsProtocol = Field(default_factory=LlamaAgentsProtocol)


class RemoteServicesSettings(_Strict):
    """Services in other processes: their own tokens, and where they may be reached."""

    tokens_env: str = Field(description="env variable holding comma-separated service tokens")
    allow: list[str] = Field(
        default_factory=lambda: ["127.0.0.1", "::1"],
        description="IP addresses, networks (CIDR) or exact hostnames a service may register at",
    )

    @model_validator(mode="after")
    def _allow_entries_parse(self) -> RemoteServicesSettings:
        import ipaddress
        import re

        for entry in self.allow:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9.\-]{0,251}[A-Za-z0-9])?", entry):
                    raise ValueError(
                        f"allow: {entry!r} is not an IP address, a network or a hostname"
                    ) from None
        return self


class CorsSettings(_Strict):
    allow_origins: list[str] = Field(default_factory=list)


class TracingSettings(_Strict):
    """OpenTelemetry tracing (off by default). The standard `OTEL_*` variables override these."""

    enabled: bool = False
    exporter: Literal["otlp", "console", "none"] = Field(
        default="otlp", description="where spans go: an OTLP/HTTP endpoint, stdout, or nowhere"
    )
    endpoint: str | None = Field(
        default=None, description="OTLP/HTTP base URL, e.g. http://127.0.0.1:4318"
    )
    service_name: str | None = Field(default=None, description="defaults to the gateway name")


class GatewayConfig(_Strict):
    name: str = "agent-gateway"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    default_service: str | None = None
    shutdown_grace: float = Field(default=10.0, ge=0)
    retain_finished_tasks: int = Field(default=10_000, ge=1)
    max_body_bytes: int = Field(default=1_048_576, ge=1)
    max_state_bytes: int = Field(default=1_048_576, ge=1)
    body_timeout: float = Field(default=30.0, gt=0, description="seconds a request body may take")
    keep_alive_timeout: float = Field(default=5.0, gt=0, description="idle keep-alive seconds")
    gc_young_threshold: int = Field(
        default=GEN0_THRESHOLD,
        ge=0,
        le=2**31 - 1,  # gc.set_threshold takes a C int
        description="a served gateway's first garbage-collector threshold (Python's is 700; "
        "0 leaves it alone); see gateway/collector.py",
    )
    store: StoreSettings = Field(default_factory=StoreSettings)
    bus: BusSettings = Field(default_factory=BusSettings)
    events: EventSettings = Field(default_factory=EventSettings)
    auth: AuthSettings | None = None
    remote_services: RemoteServicesSettings | None = None
    cors: CorsSettings = Field(default_factory=CorsSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    protocols: ProtocolSettings = Field(default_factory=ProtocolSettings)
    ui: UiSettings = Field(default_factory=UiSettings)
    services: dict[str, AnyEntry] = Field(default_factory=dict)
    source_path: str | None = Field(default=None, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _store_shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("store"), str):
            data = {**data, "store": {"kind": data["store"]}}
        return data

    @model_validator(mode="after")
    def _cross_checks(self) -> GatewayConfig:
        import re

        for name in self.services:
            if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,128}", name) or name == "control_plane":
                raise ValueError(
                    f"service name {name!r} must be 1-128 of A-Z a-z 0-9 _ . - "
                    "and not 'control_plane'"
                )
        if self.default_service and self.default_service not in self.services:
            raise ValueError(
                f"default_service {self.default_service!r} is not one of the services "
                f"({', '.join(self.services) or 'none configured'})"
            )
        if (self.bus.kind == "redis") != (self.store.kind == "redis"):
            raise ValueError(
                "bus.kind redis and store.kind redis go together: replicas share tasks, "
                f"sessions and contexts (got bus.kind {self.bus.kind}, "
                f"store.kind {self.store.kind})"
            )
        check_mounts(
            {name: entry.prefix or f"/services/{name}" for name, entry in self.services.items()},
            self.protocols.llama_agents,
            any(isinstance(e, WorkflowEntry) for e in self.services.values()),
        )
        for name, entry in self.services.items():
            refs: list[tuple[str, str]] = []
            if isinstance(entry, AgentEntry):
                refs = [("tools", ref) for ref in entry.tools]
            elif isinstance(entry, WorkflowEntry) and entry.human_service:
                refs = [("human_service", entry.human_service)]
            for key, ref in refs:
                if ref not in self.services:
                    known = ", ".join(self.services)
                    raise ValueError(
                        f"service {name!r}: {key}: refers to unknown service {ref!r} "
                        f"(services: {known})"
                    )
        return self


def check_mounts(
    service_prefixes: dict[str, str], protocol: LlamaAgentsProtocol, workflows: bool
) -> None:
    """Refuse service prefixes (name -> prefix) that would hide, or be hidden by, the gateway's
    own paths, each other, or the llama-agents protocol's routes (mounted when `workflows`).

    Run on the config's prefixes, and again on the services' actual mount prefixes once they
    are built: a custom service may bring its own `prefix`, which no config entry shows.
    """
    prefixes: dict[str, str] = {}
    for name, prefix in service_prefixes.items():
        if any(segment in (".", "..") for segment in prefix.split("/")):
            # Served as written, but every client resolves it first: `/x/../control_plane/run`
            # is sent to /control_plane/run, so the service is out of reach, its paths ours.
            raise ValueError(
                f"service {name!r}: prefix {prefix!r} has a '.' or '..' segment (clients "
                "resolve it to another path)"
            )
        if prefix in prefixes:
            raise ValueError(
                f"service {name!r}: prefix {prefix!r} is already used by {prefixes[prefix]!r}"
            )
        for built_in in BUILT_IN_PATHS:
            if _under(prefix, built_in) or _under(built_in, prefix):
                raise ValueError(
                    f"service {name!r}: prefix {prefix!r} would shadow the gateway's own "
                    f"{built_in} (built-in paths: {', '.join(BUILT_IN_PATHS)})"
                )
        for other, other_name in prefixes.items():
            if _under(prefix, other) or _under(other, prefix):
                raise ValueError(
                    f"service {name!r}: prefix {prefix!r} overlaps {other!r} of service "
                    f"{other_name!r} (one would hide the other's routes)"
                )
        prefixes[prefix] = name
    _check_protocol_paths(protocol, workflows, prefixes)


def _check_protocol_paths(
    settings: LlamaAgentsProtocol, workflows: bool, service_prefixes: dict[str, str]
) -> None:
    """The protocol's routes must not hide (or be hidden by) the gateway's own paths or a
    service's: under `/ui` they would even be served without a token."""
    if not settings.enabled or not workflows:
        return
    where = f"protocols.llama_agents.prefix {settings.prefix!r}"
    for root in _protocol_roots(settings):
        for built_in in BUILT_IN_PATHS:
            if _under(root, built_in) or _under(built_in, root):
                raise ValueError(
                    f"{where}: its route {root} would clash with the gateway's own {built_in}"
                )
        for prefix, name in service_prefixes.items():
            if _under(root, prefix) or _under(prefix, root):
                raise ValueError(
                    f"{where}: its route {root} overlaps prefix {prefix!r} of service {name!r}"
                )


def _protocol_roots(settings: LlamaAgentsProtocol) -> list[str]:
    return [settings.prefix + root for root in LLAMA_AGENTS_ROOTS]


def _under(path: str, root: str) -> bool:
    """`path` is `root` or below it (`/docs`, `/docs/x`; not `/docsx`)."""
    return path == root or path.startswith(root.rstrip("/") + "/")


# -- loading --------------------------------------------------------------------------------------
def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err.get("loc", ())]
        where = ""
        if len(loc) >= 2 and loc[0] == "services":
            where = f"service {loc[1]!r}: "
            loc = loc[3:] if len(loc) > 2 and loc[2] in ENTRY_TAGS else loc[2:]
        field = ".".join(loc)
        msg = err.get("msg", "").removeprefix("Value error, ")
        kind = err.get("type")
        if kind == "extra_forbidden":
            msg = "unknown key"
        elif kind in ("union_tag_invalid", "union_tag_not_found"):
            known = ", ".join(sorted(ENTRY_TAGS))
            tag = (err.get("ctx") or {}).get("tag")
            field = "type"
            msg = f"unknown service type {tag!r}" if tag else "missing"
            msg += f" (one of: {known})"
        lines.append(f"{where}{field + ': ' if field else ''}{msg}")
    return "; ".join(lines)


def parse_config(data: Any, source: str = "<config>") -> GatewayConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
    try:
        config = GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc)}") from None
    if not config.services:
        raise ConfigError(
            f"{source}: services: none configured; add at least one under `services:` "
            "(see config.yaml)"
        )
    config.source_path = source
    if source != "<config>" and config.store.kind == "sqlite":
        # like `source` modules, a relative store path is the config file's folder's
        config.store.path = str(Path(source).resolve().parent / config.store.path)
    return config


def load_config(path: str | os.PathLike[str] | None = None) -> GatewayConfig:
    """Read a YAML file (default: $GATEWAY_CONFIG or ./config.yaml)."""
    path = Path(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {_yaml_problem(exc)}") from None
    return parse_config(data, str(path))


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key repeated in one mapping (PyYAML keeps the last silently,
    so a service defined twice would quietly lose its first definition)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                repeated = key in seen
            except TypeError:  # an unhashable key: the base class reports it
                break
            if repeated:
                first = seen[key].start_mark.line + 1
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first defined on line {first})",
                    key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's multi-line report as one line: `line L column C: problem`."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if problem:
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
        return f"{where}{problem}"
    return " ".join(str(exc).split())


def import_object(spec: str, call_factories: bool = True) -> Any:
    """`module:attr` (attr may be dotted) -> the object; a zero-argument factory is called."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"source {spec!r} must look like 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r}: {exc}") from None
    except Exception as exc:  # the module itself is broken (SyntaxError, raises at import, ...)
        raise ValueError(
            f"importing module {module_name!r} raised {type(exc).__name__}: {exc}"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {attr!r}") from None
    if call_factories and _is_factory(obj):
        try:
            obj = obj()
        except Exception as exc:
            raise ValueError(f"factory {spec!r} raised {type(exc).__name__}: {exc}") from None
    return obj


def _is_factory(obj: Any) -> bool:
    """A plain function or class taking no required arguments is called to build the object."""
    if not (inspect.isfunction(obj) or inspect.isclass(obj)) or inspect.iscoroutinefunction(obj):
        return False
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return False
    return not any(
        p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        for p in signature.parameters.values()
    )


def build_services(config: GatewayConfig) -> list[Any]:
    """Import every source and construct the service objects, in config order."""
    from services.base import BaseService

    where = config.source_path or "<config>"
    _add_import_root(
        Path(config.source_path).resolve().parent if config.source_path else Path.cwd()
    )
    services: list[Any] = []
    for name, entry in config.services.items():
        try:
            services.append(_build_one(name, entry, BaseService))
        except ConfigError:
            raise
        except ValidationError as exc:
            raise ConfigError(f"{where}: service {name!r}: {readable(exc)}") from None
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{where}: service {name!r}: {exc}") from None
    return services


def _add_import_root(folder: Path) -> None:
    """`source` modules resolve from the config file's folder (as uvicorn does with its app dir)."""
    root = str(folder)
    if root not in sys.path:
        sys.path.insert(0, root)


def _build_one(name: str, entry: Any, base: type) -> Any:
    settings = entry.model_dump(exclude={"type", "source", "options"}, exclude_none=True)
    if isinstance(entry, CustomEntry):
        target = import_object(entry.source, call_factories=False)
        if inspect.isfunction(target):
            target = target()
        if inspect.isclass(target) and issubclass(target, base):
            return target(service_name=name, **settings, **entry.options)
        if isinstance(target, base):
            return target.model_copy(update={"service_name": name, **settings})
        raise ValueError(f"source {entry.source!r} is not a BaseService subclass or instance")
    kind = SERVICE_CLASSES[entry.type]
    module_name, _, class_name = kind.class_path.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"service type {entry.type!r} is not available: {exc}") from None
    if kind.env_defaults:
        settings = {**import_object(kind.env_defaults, call_factories=False)(), **settings}
    if entry.source:
        settings[kind.source_field] = import_object(
            entry.source, call_factories=not kind.source_is_callable
        )
    return cls(service_name=name, **settings)
