"""Server-Sent Events: a subscription of task events written as `event:` + `data:` frames."""

from __future__ import annotations

from typing import Any

from starlette.responses import StreamingResponse


def sse_response(subscription: Any) -> StreamingResponse:
    """A Starlette streaming response writing each event as `event: kind` + `data: json`."""

    async def stream():
        try:
            async for event in subscription:
                yield f"event: {event.kind}\ndata: {event.model_dump_json()}\n\n"
        finally:
            subscription.close()

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
