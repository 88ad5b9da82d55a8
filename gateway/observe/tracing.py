"""OpenTelemetry tracing: one trace per task, from the HTTP request to the last tool call.

Off by default and free when off: `setup` returns None, opentelemetry is never imported, and
each hook in the bus, the control plane and the services is one `is None` check by its caller
(a message's `trace` header simply stays None). When on:

- every HTTP request gets a server span (OpenTelemetry's ASGI middleware); a `traceparent` sent
  by the client becomes its parent;
- an accepted task gets a span that stays open until the task ends. Its context is kept on the
  task record (`trace`, `trace_id`), so work that starts later, in another task, parents to it;
- bus messages carry the W3C context (plus the task id as baggage) in `QueueMessage.trace`; a
  service attaches it when a message arrives and runs the task under a child span; a tool call
  gets a client span in the caller and a span where the tool runs;
- llama-index's own instrumentation (workflow steps, LLM calls, tool calls) is bridged by
  OpenInference's LlamaIndexInstrumentor, whose spans parent to the span current when they start;
- log records carry `trace_id`, `span_id` and the task id, so logs and traces join.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

logger = logging.getLogger("gateway.observe.tracing")

INSTALL_HINT = "pip install 'agent-gateway[tracing]'"
TASK_BAGGAGE = "gateway.task_id"  # baggage entry: the task the current work belongs to

# span attribute names
TASK_ID = "gateway.task.id"
TASK_STATUS = "gateway.task.status"
SERVICE = "gateway.service"
SESSION_ID = "gateway.session.id"
TOOL_NAME = "gateway.tool.name"
ERROR_STATUSES = frozenset({"failed", "timed_out"})
FLUSH_TIMEOUT = 5.0  # seconds shutdown waits for the last spans to be exported


class TracingUnavailable(RuntimeError):
    """Tracing is enabled but its packages are not installed."""


class TracingSettings(Protocol):
    enabled: bool
    exporter: str
    endpoint: str | None
    service_name: str | None


class _TaskLike(Protocol):
    task_id: str
    service: str
    session_id: str | None
    trace: dict[str, str] | None
    trace_id: str | None


# -- set-up ---------------------------------------------------------------------------------------
def setup_tracing(settings: TracingSettings, default_name: str) -> Tracing | None:
    """A `Tracing` for these settings, or None when tracing is off (`OTEL_SDK_DISABLED` wins)."""
    if not settings.enabled or _env_true("OTEL_SDK_DISABLED"):
        return None
    names = os.environ.get("OTEL_TRACES_EXPORTER") or settings.exporter
    exporters = [n.strip() for n in names.split(",") if n.strip()]
    try:
        from openinference.instrumentation.llama_index import (  # noqa: F401
            LlamaIndexInstrumentor,
        )
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware  # noqa: F401
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        processors = [BatchSpanProcessor(_exporter(n, settings.endpoint)) for n in exporters]
    except ImportError as exc:
        raise TracingUnavailable(
            f"tracing is enabled but {exc.name or 'an OpenTelemetry package'} is not installed; "
            f"install the tracing extra ({INSTALL_HINT}) or set tracing.enabled: false"
        ) from None
    name = os.environ.get("OTEL_SERVICE_NAME") or settings.service_name or default_name
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    for processor in processors:
        provider.add_span_processor(processor)
    return Tracing(provider)


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def _exporter(name: str, endpoint: str | None) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        env_set = any(
            os.environ.get(v)
            for v in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
        )
        if endpoint and not env_set:
            return OTLPSpanExporter(endpoint=traces_url(endpoint))
        return OTLPSpanExporter()
    if name == "none":
        return _NoExport()
    raise ValueError(f"unknown trace exporter {name!r} (otlp, console or none)")


def traces_url(endpoint: str) -> str:
    """`http://host:4318` -> `http://host:4318/v1/traces`; a URL with a path is kept as it is."""
    import httpx

    url = httpx.URL(endpoint)
    if url.path in ("", "/"):
        url = url.copy_with(path="/v1/traces")
    return str(url)


class _NoExport:
    """Spans are made (for ids in logs and task records) but sent nowhere."""

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


# -- the running tracer ---------------------------------------------------------------------------
_llama_owner: Tracing | None = None  # llama-index's dispatcher is process-wide: one owner


class Tracing:
    """The tracer of one gateway: its provider, the open task spans and the hooks' helpers."""

    def __init__(self, provider: Any) -> None:
        from llama_index_instrumentation.span import active_span_id
        from opentelemetry import baggage, context, propagate, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self.provider = provider
        self.tracer = provider.get_tracer("agent-gateway")
        self._trace, self._context, self._propagate, self._baggage = (
            trace,
            context,
            propagate,
            baggage,
        )
        self._kind, self._status, self._code = SpanKind, Status, StatusCode
        self._tasks: dict[str, Any] = {}
        self._log_filter = _TraceLogFilter(trace, baggage)
        # llama-index parents its spans by its own context variable before OpenTelemetry's;
        # a task that inherited the caller's value (a worker started during a tool call) would
        # hang its tool's spans under the caller's step instead of under our span.
        self._llama_span = active_span_id

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Bridge llama-index's instrumentation and tag log records (the app's lifespan start)."""
        global _llama_owner
        if _llama_owner is None:
            from openinference.instrumentation.llama_index import LlamaIndexInstrumentor

            LlamaIndexInstrumentor().instrument(tracer_provider=self.provider)
            _llama_owner = self
        else:
            logger.warning("llama-index is already traced by another gateway in this process")
        for handler in logging.getLogger().handlers:
            handler.addFilter(self._log_filter)

    async def aclose(self) -> None:
        """Undo `start`, end spans still open and export what is buffered, waiting at most
        FLUSH_TIMEOUT: an unreachable collector must not hold up shutdown (the exporter retries
        for up to 30 s), so the flush runs in a daemon thread that exit may abandon."""
        import anyio.to_thread

        self._detach()
        flusher = threading.Thread(target=self.provider.shutdown, name="otel-flush", daemon=True)
        flusher.start()
        await anyio.to_thread.run_sync(flusher.join, FLUSH_TIMEOUT)
        if flusher.is_alive():
            logger.warning(
                "tracing: spans not all exported within %ss; is the collector reachable?",
                FLUSH_TIMEOUT,
            )

    def _detach(self) -> None:
        global _llama_owner
        if _llama_owner is self:
            from openinference.instrumentation.llama_index import LlamaIndexInstrumentor

            LlamaIndexInstrumentor().uninstrument()
            _llama_owner = None
        for handler in logging.getLogger().handlers:
            handler.removeFilter(self._log_filter)
        for span in self._tasks.values():
            span.end()
        self._tasks.clear()

    def asgi_middleware(self) -> tuple[type, dict[str, Any]]:
        """The ASGI middleware class and its options (server spans, `traceparent` honoured)."""
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        options = {"tracer_provider": self.provider, "exclude_spans": ["receive", "send"]}
        return OpenTelemetryMiddleware, options

    # -- context on the wire ------------------------------------------------------------------
    def carrier(self) -> dict[str, str] | None:
        """The current context as W3C headers (for a bus message), None if there is none."""
        headers: dict[str, str] = {}
        self._propagate.inject(headers)
        return headers or None

    @contextmanager
    def attached(self, carrier: Mapping[str, str]) -> Iterator[None]:
        """Make the context a message carried current while it is handled."""
        token = self._context.attach(self._propagate.extract(carrier))
        try:
            yield
        finally:
            self._context.detach(token)

    # -- tasks --------------------------------------------------------------------------------
    def start_task(self, record: _TaskLike) -> None:
        """Open the task's span (child of the current context, or of the trace the record
        already carries after a restart) and keep its context on the record."""
        parent = self._propagate.extract(record.trace) if record.trace else None
        attributes = {TASK_ID: record.task_id, SERVICE: record.service}
        if record.session_id:
            attributes[SESSION_ID] = record.session_id
        span = self.tracer.start_span(
            f"task {record.service}", context=parent, attributes=attributes
        )
        self._tasks[record.task_id] = span
        ctx = self._trace.set_span_in_context(span, parent)
        ctx = self._baggage.set_baggage(TASK_BAGGAGE, record.task_id, ctx)
        headers: dict[str, str] = {}
        self._propagate.inject(headers, context=ctx)
        record.trace = headers
        record.trace_id = format(span.get_span_context().trace_id, "032x")

    def end_task(self, task_id: str, status: str, error: str | None) -> None:
        span = self._tasks.pop(task_id, None)
        if span is None:
            return
        span.set_attribute(TASK_STATUS, status)
        if status in ERROR_STATUSES:
            span.set_status(self._status(self._code.ERROR, error or status))
        span.end()

    def traced_work(
        self, work: Callable[[], Awaitable[Any]], service: str, task_id: str, session_id: str | None
    ) -> Callable[[], Awaitable[Any]]:
        """`work` (a service running a task) under a span that records how it ended."""

        async def run() -> Any:
            attributes = {TASK_ID: task_id, SERVICE: service}
            if session_id:
                attributes[SESSION_ID] = session_id
            self._llama_span.set(None)  # this task's own context: nothing to restore
            with self.tracer.start_as_current_span(
                f"run {service}", kind=self._kind.CONSUMER, attributes=attributes
            ) as span:
                result = await work()
                status = getattr(result, "status", None)
                if status is not None:
                    span.set_attribute(TASK_STATUS, str(status))
                    if str(status) in ERROR_STATUSES:
                        span.set_status(self._status(self._code.ERROR, result.error or status))
                return result

        return run

    # -- tool calls ---------------------------------------------------------------------------
    @contextmanager
    def tool_call(self, tool_name: str, service: str) -> Iterator[Any]:
        """The caller's side of a tool call over the bus."""
        with self.tracer.start_as_current_span(
            f"call {tool_name}",
            kind=self._kind.CLIENT,
            attributes={TOOL_NAME: tool_name, SERVICE: service},
        ) as span:
            yield span

    @contextmanager
    def tool_run(self, carrier: Mapping[str, str], tool_name: str, service: str) -> Iterator[Any]:
        """Where the tool runs: a child of the caller's span that the message carried."""
        token = self._context.attach(self._propagate.extract(carrier))
        llama_token = self._llama_span.set(None)
        try:
            with self.tracer.start_as_current_span(
                f"tool {tool_name}",
                kind=self._kind.SERVER,
                attributes={TOOL_NAME: tool_name, SERVICE: service},
            ) as span:
                yield span
        finally:
            self._llama_span.reset(llama_token)
            self._context.detach(token)

    def mark_error(self, span: Any, description: str) -> None:
        span.set_status(self._status(self._code.ERROR, description[:1000]))


class _TraceLogFilter(logging.Filter):
    """Adds `trace_id`/`span_id` of the current span and the task id (from baggage)."""

    def __init__(self, trace: Any, baggage: Any) -> None:
        super().__init__()
        self._trace, self._baggage = trace, baggage

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = self._trace.get_current_span().get_span_context()
        if ctx.is_valid:
            record.trace_id = format(ctx.trace_id, "032x")
            record.span_id = format(ctx.span_id, "016x")
        if getattr(record, "task_id", None) is None:
            task_id = self._baggage.get_baggage(TASK_BAGGAGE)
            if task_id is not None:
                record.task_id = task_id
        return True
