"""Service discovery: mounting a service registers it; remote services register over HTTP."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.messages import ServiceDefinition

if TYPE_CHECKING:
    from services.base import BaseService


@dataclass
class RegisteredService:
    definition: ServiceDefinition
    service: BaseService | None = None
    consumer_id: str | None = None
    max_queued_tasks: int = 1024
    owner: str | None = None  # remote services: the service token they registered with

    @property
    def is_remote(self) -> bool:
        return self.service is None


class ServiceRegistry:
    def __init__(self) -> None:
        self._services: dict[str, RegisteredService] = {}

    def add(self, entry: RegisteredService) -> None:
        name = entry.definition.service_name
        if name in self._services:
            raise ValueError(f"a service named {name!r} is already registered")
        self._services[name] = entry

    def remove(self, name: str) -> RegisteredService | None:
        return self._services.pop(name, None)

    def get(self, name: str) -> RegisteredService | None:
        return self._services.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self._services

    def definitions(self) -> dict[str, ServiceDefinition]:
        return {name: entry.definition for name, entry in self._services.items()}

    def local_services(self) -> list[Any]:
        return [e.service for e in self._services.values() if e.service is not None]
