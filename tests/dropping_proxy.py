"""A loopback TCP proxy that cuts the first event stream after a given number of SSE events.

It stands for a network that drops a long-lived connection: the client must reconnect and
resume after the last event it saw, losing and repeating nothing.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress


class DroppingProxy:
    def __init__(self, upstream_port: int, drop_after_events: int) -> None:
        self.upstream_port = upstream_port
        self.drop_after = drop_after_events
        self.dropped = 0
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._closing = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def serve(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self.connections += 1
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            _close(sink)

    def _down(self, upstream: socket.socket, client: socket.socket) -> None:
        """Forward the answer; the first event stream is cut right after `drop_after` events."""
        events = 0
        cutting = False
        try:
            while chunk := upstream.recv(65536):
                if not cutting and b"text/event-stream" in chunk:
                    with self._lock:
                        cutting = self.dropped == 0
                        if cutting:
                            self.dropped += 1
                if cutting:
                    count = chunk.count(b"\n\n")  # one per event (HTTP framing uses \r\n)
                    if events + count >= self.drop_after:
                        cut = _nth(chunk, b"\n\n", self.drop_after - events)
                        client.sendall(chunk[:cut])
                        client.shutdown(socket.SHUT_RDWR)
                        return
                    events += count
                client.sendall(chunk)
        except OSError:
            pass
        finally:
            _close(client)
            _close(upstream)

    def close(self) -> None:
        self._closing = True
        _close(self._listener)


def _nth(data: bytes, sep: bytes, n: int) -> int:
    index = -len(sep)
    for _ in range(n):
        index = data.index(sep, index + len(sep))
    return index + len(sep)


def _close(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.close()


@contextmanager
def dropping_proxy(upstream_port: int, drop_after_events: int) -> Iterator[DroppingProxy]:
    proxy = DroppingProxy(upstream_port, drop_after_events)
    thread = threading.Thread(target=proxy.serve, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.close()
