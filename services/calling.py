"""Calling user code from the event loop: async code is awaited, sync code runs in a thread.

A blocking user function (input(), a sync HTTP client, heavy CPU) must never stall the loop that
serves every other task, so it goes to `anyio.to_thread`. `contain_steps` puts the border of
`gateway.contain` around each step of a workflow (or agent), inside the workflow library's own
step runner, which handles `Exception` only.
"""

from __future__ import annotations

import functools
import inspect
import types
from typing import Any

import anyio

from gateway.contain import contained


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
            functools.partial(contained(fn), *args, **kwargs), abandon_on_cancel=True
        )
    if inspect.isawaitable(value):
        value = await value
    return value


def contain_steps(workflow: Any) -> Any:
    """Wrap every step of `workflow` (a llama-index Workflow or agent) with `contained`, in place.

    The library looks a step up on the instance by name at call time, so an instance attribute
    of the same name (carrying the same `_step_config`) is what runs. Idempotent.
    """
    steps = workflow._get_steps()
    for name, step_fn in steps.items():
        if getattr(workflow.__dict__.get(name), "__gateway_contained__", False):
            continue
        if inspect.ismethod(step_fn):
            wrapper = contained(step_fn.__func__)
            wrapper.__gateway_contained__ = True
            workflow.__dict__[name] = types.MethodType(wrapper, workflow)
        else:  # a free function added with `add_step`
            wrapper = contained(step_fn)
            wrapper.__gateway_contained__ = True
            workflow.__dict__[name] = wrapper
    return workflow
