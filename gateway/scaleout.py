"""Assembly of a replica in Redis mode (`bus.kind: redis`): Redis bus, Redis store, shared plane.

Kept apart from `gateway.app` so that a memory-only deployment never imports `redis`.
"""

from __future__ import annotations

import os
from typing import Any

from gateway.bus.redis import RedisBus, connect
from gateway.config import ConfigError, GatewayConfig
from gateway.control_plane.shared import SharedControlPlane
from gateway.runtime import Runtime, RuntimeSettings
from gateway.store.redis import RedisStore
from gateway.store.signing import SECRET_ENV


def redis_runtime(
    config: GatewayConfig,
    services: list[Any],
    settings: RuntimeSettings,
    hosted: set[str] | None,
    tracing: Any = None,
) -> Runtime:
    """One replica of a deployment whose bus and store are Redis."""
    secret = os.environ.get(SECRET_ENV, "")
    if not secret:
        raise ConfigError(
            f"{config.source_path or '<config>'}: bus.kind redis needs {SECRET_ENV} set, and the "
            "same on every replica (contexts signed on one are loaded on another)"
        )
    bus = RedisBus(
        config.bus.url,
        config.bus.namespace,
        claim_idle=config.bus.claim_idle,
        max_deliveries=config.bus.max_deliveries,
        buffer_size=config.bus.buffer_size,
        publish_timeout=config.bus.publish_timeout,
    )
    store = RedisStore(
        connect(config.store.url or config.bus.url),
        config.bus.namespace,
        replay_size=config.events.replay_size,
    )
    return Runtime(
        services,
        settings=settings,
        store=store,
        secret=secret.encode("utf-8"),
        tracing=tracing,
        bus=bus,
        plane_class=SharedControlPlane,
        hosted=hosted,
    )
