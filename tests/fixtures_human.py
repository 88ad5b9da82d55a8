"""Test-only sources for the human, component and human-in-the-loop tests."""

from __future__ import annotations

import threading
from typing import Any

import anyio
from pydantic import BaseModel
from workflows import Context, Workflow, step
from workflows.events import HumanResponseEvent, InputRequiredEvent, StartEvent, StopEvent


# -- fn_input callables ---------------------------------------------------------------------------
async def auto_answer(prompt: str, task_id: str) -> str:
    """An async fn_input: answers at once, quoting the task id and the prompt's last line."""
    await anyio.sleep(0)
    return f"auto:{task_id}:{prompt.strip().splitlines()[-1]}"


RELEASE_SYNC = threading.Event()


def blocking_answer(prompt: str, task_id: str) -> str:
    """A sync fn_input that blocks until the test releases it; says which thread ran it."""
    if not RELEASE_SYNC.wait(timeout=10):
        raise TimeoutError("the test never released blocking_answer")
    return f"thread:{threading.current_thread().name}"


async def broken_answer(prompt: str, task_id: str) -> str:
    raise RuntimeError("the pager is down")


async def never_answers(prompt: str, task_id: str) -> str:
    await anyio.sleep_forever()
    raise AssertionError("unreachable")


# -- components -----------------------------------------------------------------------------------
async def add(a: float, b: float) -> dict[str, float]:
    return {"sum": a + b}


def sync_concat(**parts: Any) -> str:
    """A sync component: runs in a worker thread, which it reports."""
    joined = "".join(str(parts[k]) for k in sorted(parts))
    return f"{joined}@{threading.current_thread() is threading.main_thread()}"


class OldComponent:
    """The reference's protocol: `arun_component(**inputs) -> dict`."""

    async def arun_component(self, **inputs: Any) -> dict[str, Any]:
        return {"output": str(inputs.get("input", "")).upper()}


old_component = OldComponent()


class Opaque:
    def __str__(self) -> str:
        return "<opaque thing>"


class Point(BaseModel):
    x: int
    y: int


def odd_output() -> dict[str, Any]:
    """Values JSON cannot hold: converted by the one rule (models dump, the rest str())."""
    return {"point": Point(x=1, y=2), "thing": Opaque(), "pair": (1, 2)}


def opaque_output() -> Opaque:
    return Opaque()


def failing_component(**kwargs: Any) -> None:
    raise ValueError("bad input for the component")


not_a_component = 42


# -- workflows ------------------------------------------------------------------------------------
class WaitForEventWorkflow(Workflow):
    """The `ctx.wait_for_event` form; `requirements` match because the request's fields echo."""

    @step
    async def ask(self, ctx: Context, ev: StartEvent) -> StopEvent:
        reply = await ctx.wait_for_event(
            HumanResponseEvent,
            waiter_event=InputRequiredEvent(prefix="What is your name?", who="visitor"),
            waiter_id="name",
            requirements={"who": "visitor"},
            timeout=30,
        )
        return StopEvent(result=f"hello {reply.response}")


class TwoQuestionsWorkflow(Workflow):
    """Asks twice in a row; the second question goes out only after the first answer."""

    @step
    async def first(self, ctx: Context, ev: StartEvent) -> InputRequiredEvent:
        return InputRequiredEvent(prefix="first?", n=1)

    @step
    async def second(self, ctx: Context, ev: HumanResponseEvent) -> InputRequiredEvent | StopEvent:
        answers = await ctx.store.get("answers", default=[])
        answers.append(ev.response)
        await ctx.store.set("answers", answers)
        if len(answers) == 1:
            return InputRequiredEvent(prefix="second?", n=2)
        return StopEvent(result=answers)


class AnswerThenHoldWorkflow(Workflow):
    """Asks once, then keeps running after the answer until the test sets `HOLDS["resume"]`."""

    @step
    async def ask(self, ctx: Context, ev: StartEvent) -> InputRequiredEvent:
        return InputRequiredEvent(prefix="go on?")

    @step
    async def hold(self, ctx: Context, ev: HumanResponseEvent) -> StopEvent:
        with anyio.fail_after(10):
            await HOLDS["resume"].wait()
        return StopEvent(result=ev.response)


HOLDS: dict[str, anyio.Event] = {}  # set up by the test, inside its event loop

wait_for_event_workflow = WaitForEventWorkflow(timeout=30)
answer_then_hold_workflow = AnswerThenHoldWorkflow(timeout=30)
two_questions_workflow = TwoQuestionsWorkflow(timeout=30)


# -- test helpers ---------------------------------------------------------------------------------
async def wait_for_status(client: Any, task_id: str, status: str, timeout: float = 5.0) -> dict:
    """Poll the control plane (with a deadline) until the task shows `status`."""
    record: dict = {}
    with anyio.move_on_after(timeout):
        while True:
            record = (await client.get(f"/control_plane/tasks/{task_id}")).json()
            if record.get("status") == status:
                return record
            await anyio.sleep(0.01)
    raise AssertionError(f"task {task_id} never became {status!r}; last seen {record}")


async def wait_for_tasks(client: Any, service: str, count: int, timeout: float = 5.0) -> list:
    """Poll a human service (with a deadline) until `count` tasks wait there."""
    tasks: list = []
    with anyio.move_on_after(timeout):
        while True:
            tasks = (
                await client.get(f"/services/{service}/tasks", params={"order": "asc"})
            ).json()["items"]
            if len(tasks) == count:
                return tasks
            await anyio.sleep(0.01)
    raise AssertionError(f"{service} never had {count} waiting tasks; last seen {tasks}")
