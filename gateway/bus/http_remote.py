"""A consumer in another process, reached by POSTing each message to its `/process_message`."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from gateway.bus import Consumer, Handler
from gateway.messages import QueueMessage


@dataclass
class RemoteConsumer(Consumer):
    """A service in another process: messages are POSTed to its `/process_message` URL."""

    handler: Handler | None = None  # type: ignore[assignment]  # always `_post`
    url: str = ""
    client: httpx.AsyncClient | None = None
    token: str | None = None  # the service token, presented to the service on each delivery

    def __post_init__(self) -> None:
        self.handler = self._post

    @classmethod
    def for_url(cls, message_type: str, url: str) -> RemoteConsumer:
        return cls(message_type=message_type, url=url)

    async def _post(self, message: QueueMessage) -> None:
        client = self.client or httpx.AsyncClient(timeout=30)
        try:
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
            response = await client.post(
                self.url, content=message.model_dump_json(), headers=headers
            )
            response.raise_for_status()
        finally:
            if self.client is None:
                await client.aclose()
