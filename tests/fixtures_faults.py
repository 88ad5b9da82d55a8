"""Test-only services and helpers for the hardening tests (`tests.fixtures_faults:<name>`).

In-process tests control the gated workflow and the stuck consumer through module-level
`Gate`s (reset them with `reset_gates()` inside the test's event loop), so they synchronise on
events instead of sleeping. The nap workflow needs no gate: it works in a uvicorn subprocess.
"""

from __future__ import annotations

from typing import Any

import anyio
from starlette.routing import BaseRoute
from workflows import Workflow, step
from workflows.events import StartEvent, StopEvent

from gateway.messages import ActionTypes, QueueMessage, TaskDefinition, TaskResult
from services.base import BaseService


class Gate:
    """An event the test opens, and a count of the runs that reached it."""

    def __init__(self) -> None:
        self.opened = anyio.Event()
        self.arrived = 0
        self.cancelled = 0
        self._waiters: list[tuple[int, anyio.Event]] = []

    def reached(self, count: int) -> anyio.Event:
        """An event set once `count` runs have arrived at the gate."""
        event = anyio.Event()
        if self.arrived >= count:
            event.set()
        else:
            self._waiters.append((count, event))
        return event

    async def wait(self) -> None:
        self.arrived += 1
        for count, event in list(self._waiters):
            if self.arrived >= count:
                event.set()
                self._waiters.remove((count, event))
        try:
            await self.opened.wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise


GATES: dict[str, Gate] = {}


def reset_gates() -> dict[str, Gate]:
    GATES.clear()
    return GATES


def gate(name: str) -> Gate:
    if name not in GATES:
        GATES[name] = Gate()
    return GATES[name]


# -- workflows ------------------------------------------------------------------------------------
class GatedWorkflow(Workflow):
    """Waits at `gate(<gate>)` (default "main"), then answers `{"n": n}`."""

    @step
    async def wait_at_gate(self, ev: StartEvent) -> StopEvent:
        await gate(str(ev.get("gate", "main"))).wait()
        return StopEvent(result={"n": ev.get("n")})


class NapWorkflow(Workflow):
    """Sleeps `seconds` (default 0.01) and answers "rested"; works out of process too."""

    @step
    async def nap(self, ev: StartEvent) -> StopEvent:
        await anyio.sleep(float(ev.get("seconds", 0.01)))
        return StopEvent(result="rested")


class RaisingWorkflow(Workflow):
    """Always raises, with a recognisable message."""

    @step
    async def explode(self, ev: StartEvent) -> StopEvent:
        raise RuntimeError(f"injected fault {ev.get('tag', '')}".strip())


class HangingWorkflow(Workflow):
    """Never ends on its own: only the service's `timeout` (or a cancel) stops it."""

    @step
    async def hang(self, ev: StartEvent) -> StopEvent:
        await anyio.sleep_forever()
        return StopEvent(result="unreachable")


# No workflow-level timeout: the service's `timeout` is what ends runaway runs in the tests.
gated = GatedWorkflow(timeout=None)
nap = NapWorkflow(timeout=None)
raising = RaisingWorkflow(timeout=None)
hanging = HangingWorkflow(timeout=None)


# -- custom services ------------------------------------------------------------------------------
class _Minimal(BaseService):
    """A service with only the common routes."""

    def routes(self) -> list[BaseRoute]:
        return self.common_routes()


class StuckService(_Minimal):
    """Its bus handler blocks on `gate("stuck")`: its bus buffer fills up behind it.

    Once the gate opens, every task it was handed completes with the text "unstuck".
    """

    async def process_message(self, message: QueueMessage) -> None:
        if message.action != ActionTypes.NEW_TASK:
            return
        await gate("stuck").wait()
        definition = TaskDefinition.model_validate(message.data["task"])

        async def work() -> TaskResult:
            return TaskResult(task_id=definition.task_id, result="unstuck")

        self.spawn(definition, work)


class SquattingService(_Minimal):
    """Brings its own prefix, the control plane's: no config entry shows it."""

    prefix: str | None = "/control_plane"

    async def process_message(self, message: QueueMessage) -> None:
        return None


def workflow_service() -> BaseService:
    """A custom entry that is a workflow service (the llama-agents protocol then mounts)."""
    from examples.echo import workflow
    from services.workflow import WorkflowService

    return WorkflowService(service_name="echo", workflow=workflow)


class BrokenHandlerService(_Minimal):
    """Its bus handler raises before any work is spawned (a bug in a service's handler)."""

    async def process_message(self, message: QueueMessage) -> None:
        raise KeyError("handler bug: missing field 'whatever'")


class MuteService(_Minimal):
    """Accepts tool calls and tasks and never answers any of them."""

    received: int = 0

    async def process_message(self, message: QueueMessage) -> Any:
        self.received += 1


# -- helpers for the tests ------------------------------------------------------------------------
def assert_error(response: Any, status: int) -> dict[str, Any]:
    """The gateway's one error shape: JSON `{"error": code, "detail": "text"}` with `status`
    (validation errors add the structured list under `errors`)."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) in ({"error", "detail"}, {"error", "detail", "errors"}), body
    assert isinstance(body["detail"], str) and body["detail"], body
    assert "errors" not in body or body["error"] == "validation_error", body
    assert isinstance(body["error"], str) and body["error"], body
    return body


async def wait_ended(client: Any, task_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """Long-poll a task's result until it is terminal (bounded by `timeout`)."""
    with anyio.fail_after(timeout):
        while True:
            response = await client.get(
                f"/control_plane/tasks/{task_id}/result", params={"wait": timeout}
            )
            if response.status_code == 200:
                return response.json()
            assert response.status_code == 202, response.text


async def wait_status(client: Any, task_id: str, status: str, timeout: float = 10.0) -> None:
    """Poll a task until it reports `status` (bounded polling with a deadline)."""
    with anyio.fail_after(timeout):
        while True:
            record = (await client.get(f"/control_plane/tasks/{task_id}")).json()
            if record["status"] == status:
                return
            await anyio.sleep(0.01)


# -- the demo deployment, as far as it builds today ----------------------------------------------
DEMO_WORKFLOWS = {
    "echo": {"type": "workflow", "source": "examples.echo:workflow"},
    "stats": {"type": "workflow", "source": "examples.pipeline:build"},
    "counter": {"type": "workflow", "source": "examples.counter:workflow"},
}


def demo_services(run_timeout: float = 2.0) -> dict[str, dict[str, Any]]:
    """The services of `config.yaml` (the demo) whose modules import and build cleanly.

    Always the three example workflows; then every other demo service (tool, agent, human,
    component, ...) that builds on its own, dropping those that refer to a dropped one. Each gets
    a short `timeout`, so a run that waits for a person ends instead of holding a request open.
    """
    import yaml

    from gateway.config import build_services, parse_config
    from tests.conftest import ROOT

    demo = yaml.safe_load((ROOT / "config.yaml").read_text()).get("services", {})
    services = {**DEMO_WORKFLOWS, **{k: v for k, v in demo.items() if k not in DEMO_WORKFLOWS}}
    kept: dict[str, dict[str, Any]] = {}
    progress = True
    while progress:  # a service is tried once the services it refers to are in
        progress = False
        for name, entry in services.items():
            refs = list(entry.get("tools", [])) + (
                [entry["human_service"]] if entry.get("human_service") else []
            )
            if name in kept or not all(ref in kept for ref in refs):
                continue
            candidate = {name: {**entry, "timeout": run_timeout}}
            candidate.update({ref: kept[ref] for ref in refs})
            try:
                build_services(parse_config({"services": candidate}))
            except Exception:  # a module that does not import or build is left out
                continue
            kept[name] = candidate[name]
            progress = True
    return {name: kept[name] for name in services if name in kept}
