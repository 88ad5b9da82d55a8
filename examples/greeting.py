"""Two steps and a custom event: the README's "Write your own workflow" example."""

from workflows import Context, Workflow, step
from workflows.events import Event, StartEvent, StopEvent


class Greeted(Event):
    """Goes from the first step to the second; it also appears on the task's event stream."""

    greeting: str


class GreetingWorkflow(Workflow):
    @step
    async def greet(self, ctx: Context, ev: StartEvent) -> Greeted:
        greeting = f"Hello, {ev.get('name', 'world')}!"
        ctx.write_event_to_stream(Greeted(greeting=greeting))  # seen by SSE subscribers
        return Greeted(greeting=greeting)

    @step
    async def shout(self, ev: Greeted) -> StopEvent:
        return StopEvent(result={"greeting": ev.greeting, "shouted": ev.greeting.upper()})


workflow = GreetingWorkflow(timeout=30)
