"""The prepared-workflow adapter: same steps and results as the library, found once per version."""

from __future__ import annotations

from unittest import mock

import pytest
from workflows import Context, Workflow, step
from workflows.events import Event, StartEvent, StopEvent

from services import prepared
from services.prepared import is_prepared, prepare, supported
from services.workflow import WorkflowService

pytestmark = pytest.mark.anyio


class Middle(Event):
    text: str


class TwoSteps(Workflow):
    @step
    async def first(self, ev: StartEvent) -> Middle:
        return Middle(text=str(ev.get("message", "")))

    @step
    async def second(self, ev: Middle) -> StopEvent:
        return StopEvent(result=ev.text.upper())


def test_the_installed_library_is_one_the_adapter_was_checked_against():
    # Fails on an upgrade of llama-index-workflows: re-read Workflow._get_steps and its callers,
    # then add the new version to services.prepared.TESTED.
    assert supported(), prepared.library_version()


def test_unknown_versions_are_left_alone():
    assert not supported("3.0.0")
    assert not supported("2.27.0")
    with mock.patch.object(prepared, "supported", return_value=False):
        assert prepare(TwoSteps()) is False


def test_prepared_steps_equal_the_library_answer_and_are_found_once():
    plain, ready = TwoSteps(), TwoSteps()
    assert prepare(ready) and is_prepared(ready) and not is_prepared(plain)
    assert sorted(ready._get_steps()) == sorted(plain._get_steps()) == ["first", "second"]
    with mock.patch.object(prepared.Workflow, "_get_steps", side_effect=AssertionError):
        for _ in range(3):
            steps = ready._get_steps()  # served from the cache
    steps.clear()  # a caller changing its copy does not change the cache
    assert sorted(ready._get_steps()) == ["first", "second"]


def test_add_step_invalidates_the_cache():
    class Growing(Workflow):
        @step
        async def start(self, ev: StartEvent) -> StopEvent:
            return StopEvent(result="x")

    wf = Growing(disable_validation=True)
    prepare(wf)
    assert sorted(wf._get_steps()) == ["start"]

    @step(workflow=Growing)
    async def finish(ev: Middle) -> StopEvent:
        return StopEvent(result=ev.text)

    assert sorted(wf._get_steps()) == ["finish", "start"]


def test_a_class_with_its_own_get_steps_is_not_touched():
    class Custom(TwoSteps):
        def _get_steps(self):
            return super()._get_steps()

    assert prepare(Custom()) is False


async def test_prepared_runs_answer_like_plain_ones_with_and_without_context():
    plain, ready = TwoSteps(), TwoSteps()
    prepare(ready)
    for _ in range(3):
        assert await ready.run(message="hi") == await plain.run(message="hi") == "HI"
    ctx = Context(ready)
    assert await ready.run(ctx=ctx, message="again") == "AGAIN"
    restored = Context.from_dict(ready, ctx.to_dict())
    assert await ready.run(ctx=restored, message="more") == "MORE"


def test_the_workflow_service_prepares_what_it_hosts():
    wf = TwoSteps()
    service = WorkflowService(service_name="two", workflow=wf)
    assert is_prepared(service.workflow)
    assert set(service.event_types()) == {"Middle"}
