"""Inline consumers: delivered from `publish` itself, no stream and no receive loop."""

from __future__ import annotations

import anyio
import pytest

from gateway.bus import Consumer
from gateway.bus.memory import MessageBus
from gateway.messages import QueueMessage

pytestmark = pytest.mark.anyio


async def test_inline_consumer_is_called_within_publish_and_errors_go_to_the_hook() -> None:
    seen: list[str] = []
    errors: list[str] = []

    async def hand_off(message: QueueMessage) -> None:
        if message.data.get("boom"):
            raise RuntimeError("bad message")
        seen.append(message.id_)

    async def on_error(message: QueueMessage, exc: BaseException) -> None:
        errors.append(str(exc))

    bus = MessageBus(on_handler_error=on_error)
    async with anyio.create_task_group() as tg:
        bus.start(tg)
        bus.register_consumer(Consumer("inbox", hand_off, id_="inbox", inline=True))
        first = QueueMessage(type="inbox")
        await bus.publish(first)
        # already handled when publish returns: nothing was queued for a loop to pick up
        assert seen == [first.id_]
        await bus.publish(QueueMessage(type="inbox", data={"boom": True}))
        assert errors == ["bad message"]
        second = QueueMessage(type="inbox")
        await bus.publish(second)  # the failure did not break delivery
        assert seen == [first.id_, second.id_]
        stats = {s["consumer_id"]: s for s in bus.stats()}["inbox"]
        assert (stats["delivered"], stats["failed"], stats["queued"]) == (2, 1, 0)
        # no receive loop was started for it
        assert not any("inbox" in t.get_name() for t in _tasks())
        tg.cancel_scope.cancel()
    await bus.aclose()


def _tasks():
    import asyncio

    return asyncio.all_tasks()
