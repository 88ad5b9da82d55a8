"""Prepare a hosted llama-index Workflow once: its steps are found once, not on every run, and
its events' private attributes are read without a failed lookup first.

`Workflow._get_steps()` walks the instance with `inspect.getmembers` on every call (~40 µs), and
one run of a one-step workflow calls it four times: a sixth of the run. The library already
caches its validation and its broker config per `_step_functions_version` (bumped by
`add_step`); this adapter caches the step table of the one hosted instance the same way.

Events: a run reads `_data` (an event's dynamic fields: `ev.message` of a StartEvent reads it
twice) and `_result` of its events a dozen times, each read two AttributeErrors made and dropped
by pydantic's lookup; `prepare_events` sets services.private_reads' descriptors on the library's
event classes (once per process, for every workflow: they only read the same dict faster).

It shadows a private method, so it is pinned: it applies only to the llama-index-workflows
versions it was checked against (TESTED), and only when the class keeps the library's own
`_get_steps`. Anything else runs unprepared, exactly as before. tests/test_prepared.py fails
when the installed version leaves TESTED: read the library's `_get_steps` callers again, then
widen it.
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from workflows import Workflow
from workflows.events import DictLikeModel, StopEvent

from services.private_reads import answers_as_pydantic, read_privates_directly

logger = logging.getLogger("services.prepared")

TESTED = ("2.26.",)  # version prefixes of llama-index-workflows this adapter was checked against
_ATTRIBUTE = "_get_steps"


def library_version() -> str | None:
    try:
        return version("llama-index-workflows")
    except PackageNotFoundError:
        return None


def supported(found: str | None = None) -> bool:
    found = library_version() if found is None else found
    return bool(found) and any(found.startswith(prefix) for prefix in TESTED)


def is_prepared(workflow: Workflow) -> bool:
    return isinstance(vars(workflow).get(_ATTRIBUTE), _CachedSteps)


def prepare(workflow: Workflow) -> bool:
    """Cache the step table of `workflow` (this instance only). True when it is now prepared."""
    if is_prepared(workflow):
        return True
    if not supported():
        logger.info("llama-index-workflows %s is not one prepare() knows", library_version())
        return False
    prepare_events()
    if getattr(type(workflow), _ATTRIBUTE, None) is not Workflow._get_steps:
        return False  # the class has its own idea of its steps: leave it alone
    setattr(workflow, _ATTRIBUTE, _CachedSteps(workflow))
    return True


def prepare_events() -> bool:
    """Read the library's event classes' private attributes directly (see the module
    docstring); True when done (now or before)."""
    if not supported():
        return False
    # Events' own __getattr__ hands private names to pydantic's (checked against TESTED).
    answers_as_pydantic(DictLikeModel.__getattr__)
    read_privates_directly(DictLikeModel)  # `_data`, for every event class
    read_privates_directly(StopEvent)  # `_result`
    return True


class _CachedSteps:
    """Stands in for the bound `_get_steps`: the library's answer, recomputed only when the
    class's `_step_functions_version` moves, and a fresh dict each call (callers may change it)."""

    __slots__ = ("_workflow", "_version", "_steps")

    def __init__(self, workflow: Workflow) -> None:
        self._workflow = workflow
        self._version: int | None = None
        self._steps: dict[str, Any] = {}

    def __call__(self) -> dict[str, Any]:
        current = type(self._workflow)._step_functions_version
        if current != self._version:
            self._steps = Workflow._get_steps(self._workflow)
            self._version = current
        return dict(self._steps)
