"""The log writer thread: every line written in order, none waited for, a full buffer drops."""

from __future__ import annotations

import io
import logging
import threading

from gateway.observe.logs import TextFormatter, _WriterHandler


def _logger(handler: logging.Handler, name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def test_lines_are_written_in_order_with_their_arguments_fixed_when_logged() -> None:
    out = io.StringIO()
    stream = logging.StreamHandler(out)
    stream.setFormatter(TextFormatter())
    handler = _WriterHandler(stream)
    logger = _logger(handler, "tests.log_writer.order")
    changing = ["first"]
    logger.info("value %s", changing, extra={"task_id": "t-1"})
    changing[0] = "changed later"
    for n in range(200):
        logger.info("line %d", n)
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    handler.close()  # writes what is left
    lines = out.getvalue().splitlines()
    assert "value ['first']" in lines[0] and "task_id=t-1" in lines[0]
    numbered = [line.rsplit(" ", 1)[1] for line in lines if "order line " in line]
    assert numbered == [str(n) for n in range(200)]
    assert any("failed" in line for line in lines) and "ValueError: boom" in out.getvalue()
    assert handler.dropped == 0


def test_a_full_buffer_drops_and_counts_instead_of_waiting() -> None:
    gate, inside = threading.Event(), threading.Event()

    class Stuck(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            inside.set()
            gate.wait(5)
            self.seen.append(record.getMessage())

    stuck = Stuck()
    handler = _WriterHandler(stuck, size=3)
    logger = _logger(handler, "tests.log_writer.full")
    logger.info("held by the writer")
    assert inside.wait(5)
    for n in range(5):  # three fit, two do not
        logger.info("queued %d", n)
    assert handler.dropped == 2
    gate.set()
    handler.close()
    assert stuck.seen == ["held by the writer", "queued 0", "queued 1", "queued 2"]
