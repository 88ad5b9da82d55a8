"""The ASGI app: gateway info, health, the control plane, and one Mount per service.

`uvicorn gateway.app:app` serves `$GATEWAY_CONFIG` (default `config.yaml`); the module-level
`app` is built on first access so that importing this module stays cheap for tests.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager, nullcontext
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from gateway import __version__
from gateway.collector import served_collector
from gateway.config import (
    ConfigError,
    GatewayConfig,
    build_services,
    check_mounts,
    load_config,
)
from gateway.control_plane.remote import RemoteAccess, internal_paths
from gateway.control_plane.routes import routes as control_plane_routes
from gateway.observe.logs import configure_logging
from gateway.observe.metrics import GatewayMetrics, metrics_endpoint
from gateway.observe.tracing import TracingUnavailable, setup_tracing
from gateway.protocols.llama_agents import LlamaAgentsProtocol
from gateway.protocols.llama_agents import routes as llama_agents_routes
from gateway.runtime import Runtime, RuntimeSettings
from gateway.store import Store
from gateway.store.lock import StoreInUse
from gateway.store.memory import MemoryStore
from gateway.store.signing import load_secret
from gateway.web.docs import docs_routes
from gateway.web.errors import EXCEPTION_HANDLERS, error_response
from gateway.web.middleware import Cors, Gate, GatewayApp, LastResort
from gateway.web.openapi import build_openapi
from gateway.web.route_index import indexed_mount
from gateway.web.server_stop import ending_streams_on_stop
from gateway.web.ui import ui_routes
from services.base import BaseService
from services.workflow import WorkflowService

logger = logging.getLogger("gateway.app")


def make_store(config: GatewayConfig) -> Store:
    if config.store.kind == "sqlite":
        from gateway.store.retention import Retention
        from gateway.store.sqlite import SqliteStore

        retain = config.store.retain
        policy = Retention(
            max_age=retain.max_age, max_tasks=retain.max_tasks, sweep_every=retain.sweep_every
        )
        store = SqliteStore(config.store.path, policy)
        try:
            store.lock.acquire()  # before anything reads the file or binds a port
        except StoreInUse as exc:
            raise ConfigError(f"{config.source_path or '<config>'}: store: {exc}") from None
        return store
    return MemoryStore()


def signing_key(store: Store) -> bytes:
    """GATEWAY_SECRET; else, with a sqlite store, the key kept in a file beside the database
    (created once, mode 0600), so saved state still verifies after a restart."""
    from gateway.store.sqlite import SqliteStore

    key_file = None
    if isinstance(store, SqliteStore):
        key_file = store.path.with_name(store.path.name + ".secret")
    return load_secret(key_file=key_file)[0]


def _tokens_from_env(config: GatewayConfig, section: str, env_name: str) -> list[str]:
    raw = os.environ.get(env_name, "")
    tokens = [t.strip() for t in raw.split(",") if t.strip()]
    if not tokens:
        raise ConfigError(
            f"{config.source_path or '<config>'}: {section}: environment variable "
            f"{env_name!r} holds no tokens (comma-separated)"
        )
    return tokens


def load_tokens(config: GatewayConfig) -> list[str] | None:
    """Bearer tokens from the env variable the config names; an empty one is a start-up error."""
    if config.auth is None:
        return None
    return _tokens_from_env(config, "auth", config.auth.tokens_env)


def load_remote_access(config: GatewayConfig, services: Iterable[Any] = ()) -> RemoteAccess:
    """Service tokens and allow list for remote services (off without `remote_services`).

    A service serving alone after joining another gateway (`register_to_control_plane`) takes
    the token it joined with, so that gateway, and only it, can deliver to it.
    """
    remote = config.remote_services
    if remote is None:
        joined = [token for s in services if (token := getattr(s, "service_token", None))]
        return RemoteAccess(joined or None)
    tokens = _tokens_from_env(config, "remote_services", remote.tokens_env)
    return RemoteAccess(tokens, remote.allow)


def hosted_services(config: GatewayConfig, names: str | None) -> set[str] | None:
    """`--services a,b` (or $GATEWAY_SERVICES): the subset this process serves; None = all."""
    if not names:
        return None
    chosen = {n.strip() for n in names.split(",") if n.strip()}
    unknown = sorted(chosen - set(config.services))
    if unknown:
        raise ConfigError(
            f"{config.source_path or '<config>'}: --services names unknown service(s) "
            f"{', '.join(unknown)} (configured: {', '.join(config.services) or 'none'})"
        )
    if config.bus.kind != "redis":
        raise ConfigError(
            f"{config.source_path or '<config>'}: --services needs bus.kind redis (the other "
            "services must be reachable in other processes)"
        )
    return chosen


def build_app(config: GatewayConfig, hosted: set[str] | None = None) -> Starlette:
    """The whole deployment described by `config`, as one Starlette app.

    `hosted` limits the services this process serves (Redis mode; the rest run elsewhere).
    """
    settings = RuntimeSettings(
        default_service=config.default_service,
        bus_buffer_size=config.bus.buffer_size,
        publish_timeout=config.bus.publish_timeout,
        shutdown_grace=config.shutdown_grace,
        retain_finished_tasks=config.retain_finished_tasks,
        event_replay_size=config.events.replay_size,
        event_feed_size=config.events.feed_size,
    )
    try:
        tracing = setup_tracing(config.tracing, config.name)
    except (TracingUnavailable, ValueError) as exc:
        raise ConfigError(f"{config.source_path or '<config>'}: tracing: {exc}") from None
    services = build_services(config)
    if config.bus.kind == "redis":
        from gateway.scaleout import redis_runtime

        runtime = redis_runtime(config, services, settings, hosted, tracing=tracing)
    else:
        store = make_store(config)
        runtime = Runtime(
            services, settings=settings, store=store, secret=signing_key(store), tracing=tracing
        )
    return create_app(runtime, config)


def build_app_for_services(services: list[Any]) -> Starlette:
    """A gateway serving just these service objects (used by `BaseService.launch_server`).

    Its `/process_message` endpoints accept the service tokens the services registered with,
    so the gateway they joined can deliver to them and nobody else can.
    """
    return create_app(Runtime.for_services(services), GatewayConfig())


def protocol_routes(runtime: Runtime, config: GatewayConfig) -> list[BaseRoute]:
    """The llama-agents protocol over this gateway's workflow services, if enabled."""
    settings = config.protocols.llama_agents
    workflows = {name: s for name, s in runtime.services.items() if isinstance(s, WorkflowService)}
    if not settings.enabled or not workflows:
        return []
    protocol = LlamaAgentsProtocol(runtime.control_plane, workflows, lambda: runtime.ready)
    found = llama_agents_routes(protocol)
    return [Mount(settings.prefix, routes=found)] if settings.prefix else found


def create_app(
    runtime: Runtime, config: GatewayConfig, remote: RemoteAccess | None = None
) -> Starlette:
    if remote is None:
        remote = load_remote_access(config, runtime.services.values())
    runtime.control_plane.remote = remote
    runtime.control_plane.states.max_state_bytes = config.max_state_bytes
    # The config checked the prefixes it names; a custom service may bring its own `prefix`
    # (or be a workflow service, which mounts the protocol's routes): check what is mounted.
    # Service mounts are tried first, so one that slipped through would hide our routes.
    try:
        check_mounts(
            {name: service.mount_prefix for name, service in runtime.services.items()},
            config.protocols.llama_agents,
            any(isinstance(s, WorkflowService) for s in runtime.services.values()),
        )
    except ValueError as exc:
        raise ConfigError(f"{config.source_path or '<config>'}: {exc}") from None

    async def info(request: Request) -> Response:
        return JSONResponse(
            {
                "name": config.name,
                "version": __version__,
                "default_service": runtime.settings.default_service,
                "services": {name: s.mount_prefix for name, s in runtime.services.items()},
                "control_plane": "/control_plane",
            }
        )

    async def healthz(request: Request) -> Response:
        # Liveness: 503 once the runtime can no longer run tasks, so a probe restarts us.
        if runtime.healthy:
            return JSONResponse({"status": "ok"})
        return error_response(503, "the runtime is not running tasks", headers={"Retry-After": "1"})

    async def readyz(request: Request) -> Response:
        if not runtime.control_plane.store.writable:
            return error_response(503, "the store cannot write", headers={"Retry-After": "2"})
        connected = getattr(runtime.bus, "healthy", True)  # Redis mode: the server answers
        if runtime.ready and runtime.control_plane.accepting and connected:
            return JSONResponse({"status": "ready"})
        return error_response(503, "not ready", headers={"Retry-After": "1"})

    metrics = GatewayMetrics(runtime.bus, runtime.control_plane.events, runtime.control_plane.store)
    runtime.control_plane.on_task_end.append(metrics.task_ended)
    tokens = load_tokens(config)

    # Services first: Starlette tries routes in order, and their `/run` is the busiest path.
    # (No prefix overlaps another route's: the config refuses such prefixes.)
    routes: list[BaseRoute] = []
    for service in runtime.services.values():
        service_routes = service.routes()
        if service.service_name not in runtime.hosted:
            # Served by another process: only `/run` (which goes through the shared bus) is
            # offered here. A tool service's `/run` calls the tool in-process, so not that one.
            service_routes = [
                r
                for r in service_routes
                if getattr(r, "path", "") == "/run" and service.service_type != "tool"
            ]
            if not service_routes:
                continue
        routes.append(Mount(service.mount_prefix, routes=service_routes, name=service.service_name))
    control_plane = indexed_mount("/control_plane", control_plane_routes(runtime.control_plane))
    own = [
        Route("/", info),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint(metrics, runtime.control_plane.tasks.active_count)),
    ]
    # The busiest first: Starlette tries the top-level routes in order (services' `/run`,
    # then the task API); the control plane's own ~30 through an index.
    routes += [control_plane, *own, *protocol_routes(runtime, config)]

    def document() -> dict[str, Any]:
        # Documented in the order the routes are listed, our own before the control plane's.
        listed = [r for r in routes if r is not control_plane]
        listed.insert(listed.index(own[-1]) + 1, control_plane)
        return build_openapi(listed, title=config.name, version=__version__, auth=bool(tokens))

    routes.extend(docs_routes(config.name, document))
    if config.ui.enabled:
        routes.extend(ui_routes())

    # The internal endpoints take service tokens, never users' (gateway.control_plane.remote).
    gate = Middleware(
        Gate,
        max_bytes=config.max_body_bytes,
        body_timeout=config.body_timeout,
        identify=runtime.control_plane.remote.identify,
        internal=internal_paths(runtime.services.values()),
        tokens=tokens or (),
        open_paths=("/healthz", "/ui"),
        open_prefixes=("/ui",) if config.ui.enabled else (),
    )
    middleware = [gate]
    if config.cors.allow_origins:  # outside the gate: preflights carry no token
        middleware.insert(
            0,
            Middleware(
                Cors,
                allow_origins=config.cors.allow_origins,
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=["Authorization", "Content-Type"],
            ),
        )
    if runtime.tracing is not None:  # outermost: the server span covers everything else
        traced, options = runtime.tracing.asgi_middleware()
        middleware.insert(0, Middleware(traced, **options))
    # Outermost: whatever escapes everything else still answers in the JSON error shape.
    middleware.insert(0, Middleware(LastResort))
    app = GatewayApp(
        routes=routes,
        middleware=middleware,
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lambda app: _lifespan(runtime, app),
    )
    app.state.runtime = runtime
    app.state.config = config
    app.state.metrics = metrics
    return app


@asynccontextmanager
async def _lifespan(runtime: Runtime, app: Starlette) -> AsyncIterator[None]:
    async with runtime.running():
        served = getattr(app.state, "served", False)
        young = app.state.config.gc_young_threshold  # create_app sets the config
        with served_collector(young) if served else nullcontext(), ending_streams_on_stop():
            # Starlette merges whatever a lifespan yields into the request state: yield nothing.
            yield


def serving(app: Starlette) -> Starlette:
    """Mark `app` as the one app of a server process (not one of many in a test run): its
    lifespan keeps the garbage collector out of the task path (gateway.collector)."""
    app.state.served = True
    return app


def default_app() -> Starlette:
    """The app `uvicorn gateway.app:app` serves: $GATEWAY_CONFIG, or config.yaml.

    A config mistake prints one line and exits 2, as `python -m gateway` does, instead of the
    traceback uvicorn would print for an exception raised while it imports the app.
    """
    configure_logging()
    try:
        config = load_config()
        hosted = hosted_services(config, os.environ.get("GATEWAY_SERVICES"))
        return serving(build_app(config, hosted))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


_default: Starlette | None = None


def __getattr__(name: str) -> Any:
    global _default
    if name == "app":
        if _default is None:
            _default = default_app()
        return _default
    raise AttributeError(name)


async def serve_over_http(service: BaseService, host: str, port: int) -> None:
    """One service alone behind uvicorn, its routes under its prefix (`launch_server`)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(build_app_for_services([service]), host=host, port=port))
    await server.serve()
