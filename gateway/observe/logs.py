"""Logging set-up: plain text or JSON lines, both carrying `task_id` and `service` when known.

With tracing on, records also carry `trace_id` and `span_id` (see gateway.observe.tracing).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
from logging.handlers import QueueHandler, QueueListener

CONTEXT_FIELDS = ("task_id", "service", "status", "trace_id", "span_id")
LOG_QUEUE_SIZE = 10_000


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = [
            f"{name}={getattr(record, name)}"
            for name in CONTEXT_FIELDS
            if getattr(record, name, None) is not None
        ]
        return f"{line} [{' '.join(context)}]" if context else line


class _BoundedQueueHandler(QueueHandler):
    """Hands records to the writer thread; when its queue is full, drops and counts them."""

    dropped = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            type(self).dropped += 1


_listener: QueueListener | None = None


def configure_logging(level: str = "INFO", fmt: str | None = None) -> None:
    """Log through a bounded queue to a writer thread, so no log line blocks the event loop.

    `GATEWAY_LOG_FORMAT=json` switches to JSON lines.
    """
    global _listener
    fmt = fmt or os.environ.get("GATEWAY_LOG_FORMAT", "text")
    writer = logging.StreamHandler()
    writer.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    if _listener is not None:
        _listener.stop()
    records: queue.Queue[logging.LogRecord] = queue.Queue(maxsize=LOG_QUEUE_SIZE)
    _listener = QueueListener(records, writer)
    _listener.start()
    atexit.register(_listener.stop)
    root = logging.getLogger()
    root.handlers[:] = [_BoundedQueueHandler(records)]
    root.setLevel(level.upper())
