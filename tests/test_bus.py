"""The in-memory bus: routing, round robin, no silent drops, back-pressure, handler failures."""

from __future__ import annotations

import asyncio
import time

import anyio
import pytest

from gateway.bus import BusFull, Consumer, NoConsumer
from gateway.bus.memory import MessageBus
from gateway.messages import QueueMessage

pytestmark = pytest.mark.anyio


class Recorder:
    """A consumer handler that records messages and can signal / block per message."""

    def __init__(self, name: str = "", expect: int = 1) -> None:
        self.name = name
        self.seen: list[QueueMessage] = []
        self.expect = expect
        self.done = anyio.Event()

    async def __call__(self, message: QueueMessage) -> None:
        self.seen.append(message)
        if len(self.seen) >= self.expect:
            self.done.set()


async def test_routes_by_type() -> None:
    bus = MessageBus()
    a, b = Recorder(expect=2), Recorder(expect=1)
    async with anyio.create_task_group() as tg:
        bus.start(tg)
        bus.register_consumer(Consumer("a", a))
        bus.register_consumer(Consumer("b", b))
        await bus.publish(QueueMessage(type="a", data={"n": 1}))
        await bus.publish(QueueMessage(type="b", data={"n": 2}))
        await bus.publish(QueueMessage(type="a", data={"n": 3}))
        with anyio.fail_after(2):
            await a.done.wait()
            await b.done.wait()
        tg.cancel_scope.cancel()
    assert [m.data["n"] for m in a.seen] == [1, 3]
    assert [m.data["n"] for m in b.seen] == [2]
    assert all(m.stats.publish_time and m.stats.process_start_time for m in a.seen + b.seen)


async def test_round_robin_between_consumers_of_one_type() -> None:
    bus = MessageBus()
    first, second = Recorder(expect=3), Recorder(expect=3)
    async with anyio.create_task_group() as tg:
        bus.start(tg)
        bus.register_consumer(Consumer("work", first, id_="first"))
        bus.register_consumer(Consumer("work", second, id_="second"))
        for n in range(6):
            await bus.publish(QueueMessage(type="work", data={"n": n}))
        with anyio.fail_after(2):
            await first.done.wait()
            await second.done.wait()
        tg.cancel_scope.cancel()
    assert [m.data["n"] for m in first.seen] == [0, 2, 4]
    assert [m.data["n"] for m in second.seen] == [1, 3, 5]


async def test_publish_without_consumer_is_an_error_not_a_drop() -> None:
    bus = MessageBus()
    async with anyio.create_task_group() as tg:
        bus.start(tg)
        bus.register_consumer(Consumer("other", Recorder()))
        with pytest.raises(NoConsumer, match="'nobody'"):
            await bus.publish(QueueMessage(type="nobody"))
        tg.cancel_scope.cancel()


async def test_deregister() -> None:
    bus = MessageBus()
    kept, gone = Recorder(expect=2), Recorder()
    async with anyio.create_task_group() as tg:
        bus.start(tg)
        bus.register_consumer(Consumer("t", kept, id_="kept"))
        bus.register_consumer(Consumer("t", gone, id_="gone"))
        bus.deregister_consumer("gone")
        bus.deregister_consumer("never-registered")  # harmless
        await bus.publish(QueueMessage(type="t"))
        await bus.publish(QueueMessage(type="t"))
        with anyio.fail_after(2):
            await kept.done.wait()
        assert gone.seen == []
        assert [s["consumer_id"] for s in bus.stats()] == ["kept"]
        bus.deregister_consumer("kept")
        assert not bus.has_consumer("t")
        with pytest.raises(NoConsumer):
            await bus.publish(QueueMessage(type="t"))
        tg.cancel_scope.cancel()


async def test_duplicate_consumer_id_is_refused() -> None:
    bus = MessageBus()
    bus.register_consumer(Consumer("t", Recorder(), id_="same"))
    with pytest.raises(ValueError, match="already registered"):
        bus.register_consumer(Consumer("t", Recorder(), id_="same"))


class Blocker:
    """Takes the first message and blocks on `release`; records everything it handled."""

    def __init__(self) -> None:
        self.entered = anyio.Event()
        self.release = anyio.Event()
        self.seen: list[int] = []

    async def __call__(self, message: QueueMessage) -> None:
        self.entered.set()
        await self.release.wait()
        self.seen.append(message.data["n"])


async def _fill(bus: MessageBus, blocker: Blocker) -> None:
    """Message 0 is in the handler, message 1 fills the one-slot buffer."""
    await bus.publish(QueueMessage(type="slow", data={"n": 0}))
    with anyio.fail_after(2):
        await blocker.entered.wait()
    await bus.publish(QueueMessage(type="slow", data={"n": 1}))


async def test_full_buffer_makes_publish_wait_then_raise_bus_full() -> None:
    bus = MessageBus(buffer_size=1, publish_timeout=0.2)
    blocker = Blocker()
    async with anyio.create_task_group() as tg:
        bus.start(tg)
        bus.register_consumer(Consumer("slow", blocker))
        await _fill(bus, blocker)
        started = time.monotonic()
        with pytest.raises(BusFull) as info:
            await bus.publish(QueueMessage(type="slow", data={"n": 2}))
        waited = time.monotonic() - started
        assert 0.18 <= waited < 1.5
        assert info.value.retry_after >= 1
        assert info.value.message_type == "slow"
        # nothing that was accepted is lost once the consumer catches up
        blocker.release.set()
        with anyio.fail_after(2):
            while len(blocker.seen) < 2:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert blocker.seen == [0, 1]


async def test_publish_succeeds_when_room_frees_within_the_bound() -> None:
    bus = MessageBus(buffer_size=1, publish_timeout=5)
    blocker = Blocker()
    published = anyio.Event()

    async def publish_third() -> None:
        await bus.publish(QueueMessage(type="slow", data={"n": 2}))
        published.set()

    async with anyio.create_task_group() as tg:
        bus.start(tg)
        bus.register_consumer(Consumer("slow", blocker))
        await _fill(bus, blocker)
        tg.start_soon(publish_third)
        await anyio.wait_all_tasks_blocked()
        assert not published.is_set(), "publish should be waiting for room"
        started = time.monotonic()
        blocker.release.set()
        with anyio.fail_after(2):
            await published.wait()
        assert time.monotonic() - started < 1.0
        with anyio.fail_after(2):
            while len(blocker.seen) < 3:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert blocker.seen == [0, 1, 2]


async def test_publish_with_timeout_none_waits_as_long_as_it_takes() -> None:
    bus = MessageBus(buffer_size=1, publish_timeout=0.01)
    blocker = Blocker()
    published = anyio.Event()

    async def publish_result() -> None:
        await bus.publish(QueueMessage(type="slow", data={"n": 2}), timeout=None)
        published.set()

    async with anyio.create_task_group() as tg:
        bus.start(tg)
        bus.register_consumer(Consumer("slow", blocker))
        await _fill(bus, blocker)
        tg.start_soon(publish_result)
        await anyio.sleep(0.1)  # well past publish_timeout: must still be waiting, not failed
        assert not published.is_set()
        blocker.release.set()
        with anyio.fail_after(2):
            await published.wait()
        tg.cancel_scope.cancel()


async def test_failing_handler_keeps_its_loop_and_calls_the_error_hook() -> None:
    errors: list[tuple[str, str]] = []
    hook_called = anyio.Event()

    async def on_error(message: QueueMessage, exc: BaseException) -> None:
        errors.append((message.data["n"], str(exc)))
        hook_called.set()

    bus = MessageBus(on_handler_error=on_error)
    handled: list[int] = []
    second = anyio.Event()

    async def handler(message: QueueMessage) -> None:
        if message.data["n"] == 1:
            raise RuntimeError("handler blew up")
        handled.append(message.data["n"])
        second.set()

    async with anyio.create_task_group() as tg:
        bus.start(tg)
        bus.register_consumer(Consumer("t", handler, id_="c"))
        await bus.publish(QueueMessage(type="t", data={"n": 1}))
        await bus.publish(QueueMessage(type="t", data={"n": 2}))
        with anyio.fail_after(2):
            await hook_called.wait()
            await second.wait()
        tg.cancel_scope.cancel()
    assert errors == [(1, "handler blew up")]
    assert handled == [2]
    (stats,) = bus.stats()
    assert stats["failed"] == 1 and stats["delivered"] == 1 and stats["restarts"] == 0


async def test_failing_error_hook_does_not_kill_the_loop() -> None:
    async def bad_hook(message: QueueMessage, exc: BaseException) -> None:
        raise RuntimeError("hook also broken")

    bus = MessageBus(on_handler_error=bad_hook)
    ok = anyio.Event()

    async def handler(message: QueueMessage) -> None:
        if message.data.get("fail"):
            raise ValueError("no")
        ok.set()

    async with anyio.create_task_group() as tg:
        bus.start(tg)
        bus.register_consumer(Consumer("t", handler))
        await bus.publish(QueueMessage(type="t", data={"fail": True}))
        await bus.publish(QueueMessage(type="t", data={}))
        with anyio.fail_after(2):
            await ok.wait()
        tg.cancel_scope.cancel()


async def test_loops_live_in_the_given_task_group() -> None:
    bus = MessageBus()
    early, late = Recorder(), Recorder()
    bus.register_consumer(Consumer("early", early, id_="early"))  # registered before start
    async with anyio.create_task_group() as tg:
        bus.start(tg)
        bus.register_consumer(Consumer("late", late, id_="late"))  # registered after start
        await bus.publish(QueueMessage(type="early"))
        await bus.publish(QueueMessage(type="late"))
        with anyio.fail_after(2):
            await early.done.wait()
            await late.done.wait()
        names = {t.name for t in anyio.get_running_tasks()}
        assert {"bus-consumer:early:early", "bus-consumer:late:late"} <= names
        tg.cancel_scope.cancel()
    # leaving the task group ended every loop: none is left running on its own
    leftovers = [t for t in asyncio.all_tasks() if t.get_name().startswith("bus-consumer:")]
    assert leftovers == []
    await bus.aclose()
