"""Calling user code from the event loop: async code is awaited, sync code runs in a thread.

A blocking user function (input(), a sync HTTP client, heavy CPU) must never stall the loop that
serves every other task, so it goes to `anyio.to_thread`.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import anyio


def is_async_callable(fn: Any) -> bool:
    """True for coroutine functions, partials of them, and objects with an async `__call__`."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - the bound method, not callability
    )


async def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Await async callables; run sync ones in a worker thread (abandoned on cancel/timeout)."""
    if is_async_callable(fn):
        value = fn(*args, **kwargs)
    else:
        value = await anyio.to_thread.run_sync(
            functools.partial(fn, *args, **kwargs), abandon_on_cancel=True
        )
    if inspect.isawaitable(value):
        value = await value
    return value
