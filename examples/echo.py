"""The trivial workflow: answers with what it was given."""

from workflows import Workflow, step
from workflows.events import StartEvent, StopEvent


class EchoWorkflow(Workflow):
    @step
    async def echo(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result=str(ev.get("message", "")))


workflow = EchoWorkflow(timeout=30)
