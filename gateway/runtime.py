"""The running gateway: bus, control plane and services under one task group.

`Runtime.running()` is the app lifespan. On exit it stops accepting tasks, lets in-flight ones
finish within the grace period, cancels the rest (they end `cancelled`), then cancels the group.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio

from gateway.bus.memory import MessageBus
from gateway.contain import contained_tasks
from gateway.control_plane.events import TaskEventHub
from gateway.control_plane.plane import ControlPlane
from gateway.store import Store
from gateway.store.memory import MemoryStore
from gateway.store.signing import load_secret
from services.base import BaseService, ServiceHost

logger = logging.getLogger("gateway.runtime")


@dataclass
class RuntimeSettings:
    default_service: str | None = None
    bus_buffer_size: int = 1024
    publish_timeout: float = 1.0
    shutdown_grace: float = 10.0
    retain_finished_tasks: int = 10_000
    event_replay_size: int = 256
    event_feed_size: int = 1024


class Runtime:
    def __init__(
        self,
        services: list[BaseService],
        settings: RuntimeSettings | None = None,
        store: Store | None = None,
        secret: bytes | None = None,
        tracing: Any = None,
        *,
        bus: MessageBus | None = None,
        plane_class: type[ControlPlane] = ControlPlane,
        hosted: set[str] | None = None,
    ) -> None:
        self.settings = settings or RuntimeSettings()
        self.tracing = tracing  # gateway.observe.tracing.Tracing, or None (off)
        self.services = {s.service_name: s for s in services}
        if len(self.services) != len(services):
            raise ValueError("two services share a name")
        if secret is None:
            secret, _ = load_secret()
        self.secret = secret
        # `hosted`: the services this process serves (all by default); the others are only
        # attached, for their `/run` and metadata, and reached through the shared bus.
        self.hosted = set(self.services) if hosted is None else set(hosted)
        self.bus = bus or MessageBus(
            buffer_size=self.settings.bus_buffer_size,
            publish_timeout=self.settings.publish_timeout,
        )
        self.control_plane = plane_class(
            self.bus,
            default_service=self.settings.default_service,
            store=store or MemoryStore(),
            events=TaskEventHub(
                replay_size=self.settings.event_replay_size,
                feed_size=self.settings.event_feed_size,
            ),
            retain_finished=self.settings.retain_finished_tasks,
        )
        self.bus.on_handler_error = self.control_plane.fail_message
        self.bus.tracing = self.control_plane.tracing = tracing
        self.bus.register_consumer(self.control_plane.consumer())
        for service in services:
            if service.service_name not in self.hosted:
                continue
            self.control_plane.register_local(
                service.service_definition, service, service.max_queued_tasks
            )
        self.started = False
        self.ready = False
        self._task_group: anyio.abc.TaskGroup | None = None

    @property
    def healthy(self) -> bool:
        """Able to run tasks: started, and its task group not cancelled (a core task died).

        A background task of ours that raises cancels the whole group; from then on nothing
        runs, so `/healthz` answers 503 and a liveness probe restarts the process.
        """
        group = self._task_group
        return self.started and group is not None and not group.cancel_scope.cancel_called

    @classmethod
    def for_services(cls, services: list[BaseService], **kwargs: Any) -> Runtime:
        settings = RuntimeSettings(default_service=services[0].service_name if services else None)
        return cls(services, settings=settings, **kwargs)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Runtime]:
        if self.tracing is not None:
            self.tracing.start()
        try:
            with contained_tasks():
                async with self._running() as runtime:
                    yield runtime
        finally:
            if self.tracing is not None:
                with anyio.CancelScope(shield=True):
                    await self.tracing.aclose()

    @asynccontextmanager
    async def _running(self) -> AsyncIterator[Runtime]:
        async with anyio.create_task_group() as task_group:
            self._task_group = task_group
            self.bus.start(task_group)
            self.control_plane.start(task_group)
            await self.control_plane.open_store(task_group)
            host = ServiceHost(
                bus=self.bus,
                control_plane=self.control_plane,
                task_group=task_group,
                secret=self.secret,
                services=self.services,
                tracing=self.tracing,
            )
            for service in self.services.values():
                if service.service_name not in self.hosted:
                    service.attach(host)
            for service in self.services.values():
                if service.service_name in self.hosted:
                    await service.start(host)
            await self.control_plane.recover()
            self.started = self.ready = True
            try:
                yield self
            finally:
                self.ready = False
                with anyio.CancelScope(shield=True):
                    leftover = await self.control_plane.drain(self.settings.shutdown_grace)
                    if leftover:
                        logger.warning("cancelled %d task(s) at shutdown", len(leftover))
                    await self.control_plane.store.close()
                task_group.cancel_scope.cancel()
        await self.bus.aclose()
        self.started = False


async def serve_alone(
    service: BaseService, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """A one-service gateway in the caller's task, until cancelled (`BaseService.launch_local`)."""
    runtime = Runtime.for_services([service])
    async with runtime.running():
        task_status.started()
        await anyio.sleep_forever()
