"""A workflow that counts its turns in its Context: run it in a session and it says 1, 2, 3."""

from workflows import Context, Workflow, step
from workflows.events import Event, StartEvent, StopEvent


class Turn(Event):
    number: int


class CounterWorkflow(Workflow):
    @step
    async def count(self, ctx: Context, ev: StartEvent) -> StopEvent:
        turns = await ctx.store.get("turns", default=0) + 1
        await ctx.store.set("turns", turns)
        ctx.write_event_to_stream(Turn(number=turns))
        return StopEvent(result={"turns": turns, "said": ev.get("message", "")})


workflow = CounterWorkflow(timeout=30)
