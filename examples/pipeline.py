"""A several-step workflow with an error path: parse -> validate -> summarize.

`numbers` must be a non-empty list of numbers; anything else makes the validate step raise,
which the gateway reports as a `failed` task with the error text.
"""

from workflows import Context, Workflow, step
from workflows.events import Event, StartEvent, StopEvent


class Parsed(Event):
    numbers: list


class Validated(Event):
    numbers: list[float]


class Progress(Event):
    stage: str


class StatsWorkflow(Workflow):
    @step
    async def parse(self, ctx: Context, ev: StartEvent) -> Parsed:
        ctx.write_event_to_stream(Progress(stage="parsed"))
        return Parsed(numbers=list(ev.get("numbers", [])))

    @step
    async def validate(self, ctx: Context, ev: Parsed) -> Validated:
        if not ev.numbers:
            raise ValueError("`numbers` must be a non-empty list")
        bad = [n for n in ev.numbers if isinstance(n, bool) or not isinstance(n, (int, float))]
        if bad:
            raise ValueError(f"not numbers: {bad!r}")
        ctx.write_event_to_stream(Progress(stage="validated"))
        return Validated(numbers=[float(n) for n in ev.numbers])

    @step
    async def summarize(self, ev: Validated) -> StopEvent:
        numbers = ev.numbers
        return StopEvent(
            result={
                "count": len(numbers),
                "sum": sum(numbers),
                "mean": sum(numbers) / len(numbers),
                "min": min(numbers),
                "max": max(numbers),
            }
        )


def build() -> StatsWorkflow:
    return StatsWorkflow(timeout=30)
