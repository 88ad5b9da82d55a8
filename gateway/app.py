"""The ASGI app: gateway info, health, the control plane, and one Mount per service.

`uvicorn gateway.app:app` serves `$GATEWAY_CONFIG` (default `config.yaml`); the module-level
`app` is built on first access so that importing this module stays cheap for tests.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from gateway import __version__
from gateway.config import GatewayConfig, build_services, load_config
from gateway.control_plane_routes import routes as control_plane_routes
from gateway.http import EXCEPTION_HANDLERS, error_response
from gateway.runtime import Runtime, RuntimeSettings
from gateway.store import MemoryStore, Store

logger = logging.getLogger("gateway.app")


def make_store(config: GatewayConfig) -> Store:
    if config.store.kind == "sqlite":
        from gateway.sqlite_store import SqliteStore

        return SqliteStore(config.store.path)
    return MemoryStore()


def build_app(config: GatewayConfig) -> Starlette:
    """The whole deployment described by `config`, as one Starlette app."""
    settings = RuntimeSettings(
        default_service=config.default_service,
        bus_buffer_size=config.bus.buffer_size,
        publish_timeout=config.bus.publish_timeout,
        shutdown_grace=config.shutdown_grace,
        retain_finished_tasks=config.retain_finished_tasks,
        event_replay_size=config.events.replay_size,
        event_subscriber_buffer=config.events.subscriber_buffer,
    )
    runtime = Runtime(build_services(config), settings=settings, store=make_store(config))
    return create_app(runtime, config)


def build_app_for_services(services: list[Any]) -> Starlette:
    """A gateway serving just these service objects (used by `BaseService.launch_server`)."""
    return create_app(Runtime.for_services(services), GatewayConfig())


def create_app(runtime: Runtime, config: GatewayConfig) -> Starlette:
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
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        if runtime.ready and runtime.control_plane.accepting:
            return JSONResponse({"status": "ready"})
        return error_response(503, "not ready", headers={"Retry-After": "1"})

    routes: list[BaseRoute] = [
        Route("/", info),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Mount("/control_plane", routes=control_plane_routes(runtime.control_plane)),
    ]
    for service in runtime.services.values():
        routes.append(
            Mount(service.mount_prefix, routes=service.routes(), name=service.service_name)
        )

    async def unexpected(request: Request, exc: Exception) -> Response:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal error")

    handlers = {**EXCEPTION_HANDLERS, Exception: unexpected}
    app = Starlette(
        routes=routes,
        exception_handlers=handlers,
        lifespan=lambda app: runtime.running(),
    )
    app.state.runtime = runtime
    app.state.config = config
    return app


def default_app() -> Starlette:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return build_app(load_config())


_default: Starlette | None = None


def __getattr__(name: str) -> Any:
    global _default
    if name == "app":
        if _default is None:
            _default = default_app()
        return _default
    raise AttributeError(name)
