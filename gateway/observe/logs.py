"""Logging set-up: plain text or JSON lines, both carrying `task_id` and `service` when known.

With tracing on, records also carry `trace_id` and `span_id` (see gateway.observe.tracing).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time
from collections import deque

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


class _WriterHandler(logging.Handler):
    """Hands records to a writer thread, so no log line blocks the event loop.

    The thread sleeps on an event while nothing waits; once woken it writes everything queued
    in one write and then rests WRITE_EVERY seconds. At a line per task, waking a thread (and
    handing it the GIL) for every line cost the event loop more than the line itself; this
    way lines arriving close together share one wake-up. At most `size` records wait: more are
    dropped and counted (`dropped`), never waited for.
    """

    WRITE_EVERY = 0.02  # seconds; a line reaches the stream at most this much later

    def __init__(self, writer: logging.Handler, size: int = LOG_QUEUE_SIZE) -> None:
        super().__init__()
        self.writer = writer
        self.size = size
        self.dropped = 0
        self._records: deque[logging.LogRecord] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="gateway-log-writer", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        if len(self._records) >= self.size:
            self.dropped += 1
            return
        if record.exc_info and not record.exc_text:  # its frames may change once we return
            record.exc_text = self.writer.formatter.formatException(record.exc_info)  # type: ignore[union-attr]
        record.message = record.getMessage()  # fixed now: its arguments may change later
        record.msg, record.args = record.message, None
        self._records.append(record)
        if not self._wake.is_set():
            self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            self._write_batch()
            if self._stopping:
                return
            time.sleep(self.WRITE_EVERY)

    def _write_batch(self) -> None:
        """Format what is queued and write it with one `write` and one `flush`: the stream
        handler's own `emit` flushes after every line, a system call per task at full load."""
        records = self._records
        stream = getattr(self.writer, "stream", None)
        if stream is None:  # any other handler: one record at a time, its own way
            while records:
                self.writer.handle(records.popleft())
            self.writer.flush()
            return
        lines = []
        while records:
            record = records.popleft()
            try:
                lines.append(self.writer.format(record) + "\n")
            except Exception:
                self.writer.handleError(record)
        if not lines:
            return
        try:
            stream.write("".join(lines))
            stream.flush()
        except Exception:  # a closed or broken stream: logging must never stop the gateway
            pass

    def close(self) -> None:
        """Write what is left and stop the thread."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=5)
        super().close()


_handler: _WriterHandler | None = None


def flush_logs() -> None:
    """Write out every queued record now and stop the writer (before a process exits with a
    last line of its own, which must not be followed by late log lines)."""
    if _handler is not None:
        _handler.close()


def configure_logging(level: str = "INFO", fmt: str | None = None) -> None:
    """Log through a bounded buffer to a writer thread (see `_WriterHandler`).

    `GATEWAY_LOG_FORMAT=json` switches to JSON lines.
    """
    global _handler
    fmt = fmt or os.environ.get("GATEWAY_LOG_FORMAT", "text")
    writer = logging.StreamHandler()
    writer.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    if _handler is not None:
        _handler.close()
    _handler = _WriterHandler(writer)
    atexit.register(_handler.close)
    # No log format here shows the caller's file and line, the process or the thread: skip
    # collecting them for every record (the logging docs' "Optimization" section).
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [_handler]
    root.setLevel(level.upper())
