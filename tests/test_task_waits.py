"""TaskTable.wait: bounded by one shared timer (gateway.wakeups), not a cancel
scope per wait. It returns the record either way, wakes every waiter at the task's end, wakes
each at its own deadline, gives way to cancellation, and leaves nothing behind."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from gateway.control_plane import tasks as tasks_module
from gateway.control_plane.tasks import TaskRecord, TaskTable
from gateway.messages import TaskStatus
from gateway.wakeups import Wakeups, asyncio_cancel_scope

pytestmark = pytest.mark.anyio


def table_with(*task_ids: str) -> TaskTable:
    table = TaskTable()
    for task_id in task_ids:
        table.add(TaskRecord(task_id=task_id, service="svc", status=TaskStatus.RUNNING))
    return table


def assert_nothing_left(table: TaskTable) -> None:
    assert table._done == {}
    assert len(table._wakeups) == 0


async def test_a_wait_that_runs_out_returns_the_running_record_and_leaves_nothing() -> None:
    table = table_with("t")
    with anyio.fail_after(5):
        record = await table.wait("t", 0.05)
    assert record is not None and record.status is TaskStatus.RUNNING
    assert_nothing_left(table)


@pytest.mark.parametrize("timeout", [0, -1])
async def test_no_time_to_wait_returns_at_once(timeout: float) -> None:
    table = table_with("t")
    with anyio.fail_after(1):
        record = await table.wait("t", timeout)
    assert record is not None and record.status is TaskStatus.RUNNING
    assert_nothing_left(table)


async def test_a_nan_timeout_is_refused_and_leaves_nothing() -> None:
    # HTTP refuses it (`wait` is a bounded float); an internal caller must not wedge the timer.
    table = table_with("t")
    with pytest.raises(ValueError, match="NaN"):
        await table.wait("t", float("nan"))
    assert_nothing_left(table)


async def test_unknown_and_ended_tasks_return_at_once() -> None:
    table = table_with("t")
    table.finish("t", TaskStatus.COMPLETED)
    with anyio.fail_after(1):
        assert await table.wait("nope", None) is None
        record = await table.wait("t", None)
    assert record is not None and record.status is TaskStatus.COMPLETED


async def test_every_waiter_wakes_at_the_end_and_each_at_its_own_deadline() -> None:
    table = table_with("t")
    woke: list[tuple[str, TaskStatus]] = []

    async def waiter(name: str, timeout: float | None) -> None:
        record = await table.wait("t", timeout)
        assert record is not None
        woke.append((name, record.status))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            # Added longest first: the shorter deadline that comes later still fires first.
            for name, timeout in [
                ("forever", None),
                ("long", 60.0),
                ("soon", 0.05),
                ("soon", 0.05),
            ]:
                tg.start_soon(waiter, name, timeout)
            await anyio.sleep(0.3)
            assert woke == [("soon", TaskStatus.RUNNING)] * 2
            assert len(table._done["t"]) == 2  # the two that ran out are gone
            table.finish("t", TaskStatus.COMPLETED)
    assert sorted(woke[2:]) == [("forever", TaskStatus.COMPLETED), ("long", TaskStatus.COMPLETED)]
    assert_nothing_left(table)


@pytest.mark.parametrize("timeout", [None, 60.0])
async def test_a_cancelled_waiter_stops_at_once_and_the_others_keep_waiting(
    timeout: float | None,
) -> None:
    table = table_with("t")
    ends: list[TaskStatus] = []

    async def other() -> None:
        record = await table.wait("t", 60.0)
        assert record is not None
        ends.append(record.status)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(other)
            with anyio.CancelScope() as scope:

                async def client_gone() -> None:
                    await anyio.sleep(0.01)
                    scope.cancel()

                tg.start_soon(client_gone)
                await table.wait("t", timeout)
                raise AssertionError("the wait returned instead of being cancelled")
            assert scope.cancelled_caught
            assert len(table._done["t"]) == 1
            table.finish("t", TaskStatus.FAILED)
    assert ends == [TaskStatus.FAILED]
    assert_nothing_left(table)


async def test_waiters_that_return_do_not_pile_up_behind_one_that_still_waits() -> None:
    ids = [f"t{n}" for n in range(500)]
    table = table_with("slow", *ids)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(table.wait, "slow", 60.0)  # the earliest deadline, held throughout
            for task_id in ids:
                tg.start_soon(table.wait, task_id, 60.0)
                await anyio.sleep(0)
                table.finish(task_id, TaskStatus.COMPLETED)
                await anyio.sleep(0)
                assert len(table._wakeups) <= 2 + 64
            assert list(table._done) == ["slow"]
            table.finish("slow", TaskStatus.COMPLETED)
    assert_nothing_left(table)


def test_a_table_used_from_a_new_loop_still_keeps_deadlines() -> None:
    table = table_with("t")

    async def wait_briefly() -> TaskStatus | None:
        with anyio.fail_after(5):
            record = await table.wait("t", 0.05)
        return None if record is None else record.status

    async def left_waiting() -> None:  # its loop ends with the wait (and its timer) pending
        async with anyio.create_task_group() as tg:
            tg.start_soon(table.wait, "t", 60.0)
            await anyio.sleep(0.01)
            tg.cancel_scope.cancel()

    anyio.run(left_waiting)
    assert anyio.run(wait_briefly) == TaskStatus.RUNNING
    assert anyio.run(wait_briefly) == TaskStatus.RUNNING
    assert_nothing_left(table)


async def test_off_asyncio_a_cancel_scope_keeps_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tasks_module, "asyncio_loop", lambda: None)  # as on trio
    await test_a_wait_that_runs_out_returns_the_running_record_and_leaves_nothing()
    await test_every_waiter_wakes_at_the_end_and_each_at_its_own_deadline()


async def test_the_timer_sets_only_what_is_due_and_drops_withdrawn_entries() -> None:
    wakeups = Wakeups()
    loop = asyncio.get_running_loop()
    loop_time = loop.time()
    due, later, gone = asyncio.Event(), asyncio.Event(), asyncio.Event()
    wakeups.add(loop, loop_time + 60, later)
    withdrawn = wakeups.add(loop, loop_time + 0.01, gone)
    wakeups.add(loop, loop_time + 0.05, due)
    wakeups.withdraw(withdrawn)
    with anyio.fail_after(5):
        await due.wait()
    assert not later.is_set() and not gone.is_set()
    assert len(wakeups) == 1


async def test_a_nan_deadline_is_refused_and_holds_up_nothing() -> None:
    """NaN compares false with everything: at the head of the heap it would keep every entry
    behind it from ever being set."""
    wakeups = Wakeups()
    loop = asyncio.get_running_loop()
    with pytest.raises(ValueError, match="NaN"):
        wakeups.add(loop, float("nan"), asyncio.Event())
    due = asyncio.Event()
    wakeups.add(loop, loop.time() + 0.02, due)
    with anyio.fail_after(5):
        await due.wait()
    assert len(wakeups) == 0


async def test_the_asyncio_scope_is_a_fresh_anyio_scope_that_cancels_and_keeps_deadlines() -> None:
    """`asyncio_cancel_scope` builds the backend's class directly: what it returns must still
    be an anyio scope of its own each time, nest under anyio's, and cancel as one."""
    first, second = asyncio_cancel_scope(), asyncio_cancel_scope()
    assert first is not second
    assert isinstance(first, anyio.CancelScope) and type(first) is type(anyio.CancelScope())
    with anyio.CancelScope() as outer, first:
        first.cancel()
        await anyio.sleep(5)
    assert first.cancelled_caught and not outer.cancel_called
    with second:
        second.deadline = anyio.current_time() + 0.02
        with anyio.fail_after(5):
            await anyio.sleep(5)
    assert second.cancelled_caught
