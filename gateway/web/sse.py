"""Server-Sent Events: a subscription written as `id:` + `event:` + `data:` frames.

The `id:` is the event's sequence number, so a client (a browser's EventSource does it by
itself) resumes after a disconnect with `Last-Event-ID`, or with the `after` query parameter.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import StreamingResponse

from gateway.web.errors import ApiError
from gateway.web.server_stop import EndableStream

LAST_EVENT_ID = "last-event-id"


def resume_after(request: Request, after: int | None = None) -> int:
    """Where a reader resumes: after the larger of `Last-Event-ID` and the `after` parameter.

    An EventSource reconnect sends the header while its URL keeps the original `after`, so the
    larger of the two is the newest event the reader has seen.
    """
    cursor = after or 0
    raw = (request.headers.get(LAST_EVENT_ID) or "").strip()
    if raw:
        if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
            raise ApiError(
                422, f"Last-Event-ID must be an event id (a whole number), not {raw[:40]!r}"
            )
        cursor = max(cursor, int(raw))
    return cursor


def sse_response(subscription: Any, *, endless: bool = False) -> StreamingResponse:
    """A streaming response writing each held or live event of `subscription` as one frame.

    `endless` (the event feed): ended at once by a stopping server (gateway.web.server_stop).
    A task's stream is not: it ends with the task's result, which its reader must not miss.
    """

    async def stream():
        try:
            async for seq, kind, raw in subscription.frames():
                yield f"id: {seq}\nevent: {kind}\ndata: {raw}\n\n"
        finally:
            subscription.close()

    response_class = EndableStream if endless else StreamingResponse
    return response_class(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
