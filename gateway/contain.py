"""The border between the gateway and the code it hosts: user code can end one task, never more.

Python lets two exceptions out of an asyncio task into the event loop itself (`SystemExit` and
`KeyboardInterrupt` stop `run_forever`, so the whole server exits), and anyio's task groups treat
any other `BaseException`, or a `CancelledError` nobody asked for, as fatal to the whole group.
User code (workflow steps, agents, components, tools, `fn_input`, custom services) may raise any
of them, so one rule applies wherever the gateway awaits it:

- a cancellation the gateway asked for (task cancel, timeout, shutdown) goes on up, untouched;
- anything else ends that task (or tool call) failed with "TypeName: text".

"Asked for" is read from anyio's cancel scopes: a scope of ours has `cancel_called`, or anyio has
delivered an enclosing scope's cancellation to this task (anyio cancels asyncio tasks natively, so
the task's `cancelling()` count is non-zero). A `CancelledError` raised with neither is the user's.

Code the gateway awaits itself is covered by `is_our_cancellation` at each call site. Tasks that
user code (or a library on its behalf, e.g. a workflow's step workers) creates are covered by a
task factory installed for the runtime's lifetime: a task created while user code runs gets a thin
wrapper that turns such an exception into `UserCodeError`, an ordinary `Exception`.

Threads need the conversion on their side: an exception that comes back from a thread travels in
a future, and asyncio throws a future's `GeneratorExit` into the awaiting task's *outermost*
coroutine (closing every frame in between, their handlers included). So sync user code runs
through `contained` (anyio.to_thread) or the loop's default executor, `ContainingExecutor`
(run_in_executor, asyncio.to_thread), both of which convert in the worker thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import math
import types
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import anyio

_IN_USER_CODE: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "gateway_in_user_code", default=False
)


class UserCodeError(Exception):
    """A `BaseException` from user code, made an ordinary exception so it ends only its task."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(describe(original))
        self.original = original


def describe(exc: BaseException) -> str:
    """`TypeName: text` of the exception user code raised (unwrapping our own wrapper)."""
    while isinstance(exc, UserCodeError):
        exc = exc.original
    return f"{type(exc).__name__}: {exc}"


def is_our_cancellation(exc: BaseException, *scopes: anyio.CancelScope | None) -> bool:
    """True if `exc` is a cancellation the gateway asked for (see the module docstring)."""
    if not isinstance(exc, asyncio.CancelledError):  # anyio's cancel class on asyncio
        return False
    if any(scope is not None and scope.cancel_called for scope in scopes):
        return True
    try:
        task = asyncio.current_task()
    except RuntimeError:  # in a worker thread: nothing of ours cancels there
        return False
    return task is not None and task.cancelling() > 0


def cancelled_by_a_scope() -> bool:
    """Is an anyio cancel scope around the current task cancelled (shutdown, a cancel request,
    a timeout)? A CancelledError with none is a bare `task.cancel()` from code the task ran:
    user code cancelling "its own" task, or a timer it left behind."""
    return anyio.current_effective_deadline() == -math.inf


def clear_stray_cancel() -> None:
    """Forget every cancel request counted on the current task that no cancel scope made, so
    that the task's next CancelledError is judged on its own (`is_our_cancellation`)."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # not on asyncio
        return
    if task is not None and task.cancelling() and not cancelled_by_a_scope():
        while task.cancelling():
            task.uncancel()


def contain(exc: BaseException) -> BaseException:
    """What to raise instead of `exc` at the border: ours and ordinary ones pass unchanged."""
    if isinstance(exc, Exception) or is_our_cancellation(exc):
        return exc
    return UserCodeError(exc)


class user_code:  # used as a function: `with user_code():`
    """Mark the current context as running user code: tasks created under it are contained.

    A class, not a generator context manager: it is entered for every tool call.
    """

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        self._token = _IN_USER_CODE.set(True)

    def __exit__(self, *exc_info: object) -> None:
        _IN_USER_CODE.reset(self._token)


def enter_user_code() -> None:
    """Mark the rest of this task (a worker that only ever runs user code) as user code."""
    _IN_USER_CODE.set(True)


def contained(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` (sync or async) with the border around it: what `contain` replaces, it replaces."""
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def contained_async(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except BaseException as exc:
                replacement = contain(exc)
                if replacement is exc:
                    # A re-raise leaves this frame with `exc` still bound, and the traceback
                    # holds the frame: a cycle only the garbage collector frees, one per
                    # cancelled worker of every run. Unbind it first.
                    del exc, replacement
                    raise
                raise replacement from exc

        return contained_async

    @functools.wraps(fn)
    def contained_sync(*args: Any, **kwargs: Any) -> Any:
        return _call_sync_contained(fn, *args, **kwargs)

    return contained_sync


def _call_sync_contained(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)` with what it raises converted (the sync half of `contained`)."""
    try:
        return fn(*args, **kwargs)
    except BaseException as exc:
        replacement = contain(exc)
        if replacement is exc:
            del exc, replacement  # see `contained`
            raise
        raise replacement from exc


def _call_contained(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """`contained(fn)(*args, **kwargs)` without making the wrapper: it runs for every job of
    the loop's executor (llama-index runs every sync FunctionTool call there). A coroutine
    function's coroutine comes back contained, as `contained` would have made it."""
    result = _call_sync_contained(fn, *args, **kwargs)
    if type(result) is types.CoroutineType:
        return _contained(result)
    return result


class ContainingExecutor(ThreadPoolExecutor):
    """The loop's default executor: what a submitted function raises is converted in-thread."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        return super().submit(_call_contained, fn, *args, **kwargs)


async def _contained(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        return await coro
    except BaseException as exc:
        replacement = contain(exc)
        if replacement is exc:
            del exc, replacement  # see `contained`: no cycle through this frame
            raise
        raise replacement from exc


def _task_factory(previous: Any) -> Any:
    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Future:
        if _IN_USER_CODE.get() and asyncio.iscoroutine(coro):
            coro = _contained(coro)
        if previous is not None:
            return previous(loop, coro, **kwargs)
        return asyncio.Task(coro, loop=loop, **kwargs)

    factory.contains_user_code = True  # type: ignore[attr-defined]
    return factory


@contextmanager
def contained_tasks() -> Iterator[None]:
    """Install the containing task factory on the running loop for the block's duration."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not on asyncio (e.g. trio): nothing to install
        yield
        return
    previous = loop.get_task_factory()
    if getattr(previous, "contains_user_code", False):
        yield  # already installed by an enclosing runtime on this loop
        return
    # The loop shuts its default executor down when it closes (asyncio.run does).
    loop.set_default_executor(ContainingExecutor(thread_name_prefix="gateway-executor"))
    loop.set_task_factory(_task_factory(previous))
    try:
        yield
    finally:
        loop.set_task_factory(previous)
