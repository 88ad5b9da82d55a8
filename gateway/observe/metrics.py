"""Prometheus metrics, one registry per app (so several apps in one process don't collide)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

from gateway.bus.memory import MessageBus
from gateway.control_plane.events import TaskEventHub
from gateway.control_plane.tasks import TaskRecord
from gateway.store import Store

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class GatewayMetrics:
    def __init__(self, bus: MessageBus, events: TaskEventHub, store: Store | None = None) -> None:
        self.bus = bus
        self.events = events
        self.store = store or Store()
        self._failed_commits_seen = 0
        self._ended: dict[tuple[str, str], Any] = {}
        self._latency: dict[str, Any] = {}
        self.registry = CollectorRegistry()
        self.tasks = Counter(
            "gateway_tasks_total",
            "Tasks that reached a terminal status",
            ["service", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "gateway_task_latency_seconds",
            "Time from acceptance to terminal status",
            ["service"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "gateway_queue_depth",
            "Messages waiting in a consumer's bus buffer",
            ["message_type", "consumer_id"],
            registry=self.registry,
        )
        self.subscribers = Gauge(
            "gateway_sse_subscribers", "Open event-stream subscribers", registry=self.registry
        )
        self.active = Gauge(
            "gateway_tasks_active", "Accepted tasks not yet ended", registry=self.registry
        )
        self.failed_commits = Counter(
            "gateway_store_failed_commits",
            "Store commits that failed (disk full, I/O error); their new tasks were refused",
            registry=self.registry,
        )
        self.store_writable = Gauge(
            "gateway_store_writable",
            "1 while the store takes writes, 0 from a failed commit until one succeeds again",
            registry=self.registry,
        )

    def task_ended(self, record: TaskRecord) -> None:
        # `labels()` validates and locks on every call: look each labelled child up once.
        key = (record.service, record.status.value)
        counter = self._ended.get(key)
        if counter is None:
            counter = self._ended[key] = self.tasks.labels(*key)
        counter.inc()
        if record.finished_at is not None:
            latency = self._latency.get(record.service)
            if latency is None:
                latency = self._latency[record.service] = self.latency.labels(record.service)
            latency.observe(record.finished_at - record.created_at)

    def refresh(self, active: int) -> None:
        """Gauges are read at scrape time, so the hot path pays nothing for them."""
        self.queue_depth.clear()
        for stat in self.bus.stats():
            self.queue_depth.labels(stat["message_type"], stat["consumer_id"]).set(stat["queued"])
        self.subscribers.set(self.events.subscriber_count)
        self.active.set(active)
        failed = self.store.failed_commits
        self.failed_commits.inc(failed - self._failed_commits_seen)
        self._failed_commits_seen = failed
        self.store_writable.set(1 if self.store.writable else 0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def metrics_endpoint(metrics: GatewayMetrics, active_count):
    async def metrics_view(request: Request) -> Response:
        metrics.refresh(active_count())
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return metrics_view
