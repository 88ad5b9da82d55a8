"""Test-only workflows, referenced from config dicts as `tests.fixtures_workflows:<name>`.

In-process tests share a `Probe` with the workflows they run: the workflow steps record how many
runs are inside them at once, how many were cancelled, and block on events the test controls, so
tests synchronise on events instead of sleeping.
"""

from __future__ import annotations

import anyio
from workflows import Context, Workflow, step
from workflows.events import StartEvent, StopEvent


class Probe:
    """What the test can see of (and control in) the runs of the workflows below."""

    def __init__(self) -> None:
        self.release = anyio.Event()
        self.running = 0
        self.max_running = 0
        self.started = 0
        self.finished = 0
        self.cancelled = 0
        self.was_cancelled = anyio.Event()
        self._started_events: list[tuple[int, anyio.Event]] = []

    def started_event(self, count: int) -> anyio.Event:
        """An event set once `count` runs have entered their gated step."""
        event = anyio.Event()
        if self.started >= count:
            event.set()
        else:
            self._started_events.append((count, event))
        return event

    def _enter(self) -> None:
        self.started += 1
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        for count, event in list(self._started_events):
            if self.started >= count:
                event.set()
                self._started_events.remove((count, event))


PROBE: Probe | None = None


def new_probe() -> Probe:
    """Reset the shared probe (call inside the test's event loop)."""
    global PROBE
    PROBE = Probe()
    return PROBE


def _probe() -> Probe:
    if PROBE is None:
        raise RuntimeError("no probe: call tests.fixtures_workflows.new_probe() first")
    return PROBE


class GatedWorkflow(Workflow):
    """Enters, waits for `PROBE.release`, answers `{"n": n}` (or raises if `fail`)."""

    @step
    async def gate(self, ctx: Context, ev: StartEvent) -> StopEvent:
        probe = _probe()
        probe._enter()
        try:
            await probe.release.wait()
            if ev.get("fail", False):
                raise ValueError(f"task {ev.get('n')} was told to fail")
            probe.finished += 1
            return StopEvent(result={"n": ev.get("n")})
        except BaseException as exc:
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                probe.cancelled += 1
                probe.was_cancelled.set()
            raise
        finally:
            probe.running -= 1


class SlowWorkflow(Workflow):
    """Sleeps `seconds` (default 30) then answers "slept"; works out of process too."""

    @step
    async def nap(self, ev: StartEvent) -> StopEvent:
        await anyio.sleep(float(ev.get("seconds", 30)))
        return StopEvent(result="slept")


class FailingWorkflow(Workflow):
    """Always raises with a recognisable message."""

    @step
    async def explode(self, ev: StartEvent) -> StopEvent:
        raise RuntimeError(f"kaboom {ev.get('tag', '')}".strip())


class AddWorkflow(Workflow):
    """`a + b`, immediately."""

    @step
    async def add(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result=ev.get("a", 0) + ev.get("b", 0))


# No workflow-level timeout: the service's `timeout` is what ends runaway runs in the tests.
gated = GatedWorkflow(timeout=None)
slow = SlowWorkflow(timeout=None)
failing = FailingWorkflow(timeout=None)
add = AddWorkflow(timeout=None)


def broken_factory() -> Workflow:
    raise RuntimeError("factory exploded on purpose")


not_a_workflow = {"this": "is a dict"}
