"""A workflow that asks a person for approval mid-run.

`ask` emits an InputRequiredEvent; with `human_service:` configured on the workflow service it
becomes a task of that human service, and the person's answer comes back as a HumanResponseEvent
that `decide` turns into the result. Run with `{"request": "deploy v2 to production"}`.
"""

from workflows import Context, Workflow, step
from workflows.events import HumanResponseEvent, InputRequiredEvent, StartEvent, StopEvent

APPROVING_ANSWERS = frozenset({"yes", "y", "approve", "approved", "ok", "lgtm"})


class ApprovalWorkflow(Workflow):
    @step
    async def ask(self, ctx: Context, ev: StartEvent) -> InputRequiredEvent:
        request = str(ev.get("request", "")).strip() or "an unnamed request"
        await ctx.store.set("request", request)
        return InputRequiredEvent(prefix=f"Approve {request}? Answer yes or no.")

    @step
    async def decide(self, ctx: Context, ev: HumanResponseEvent) -> StopEvent:
        answer = ev.response.strip()
        return StopEvent(
            result={
                "request": await ctx.store.get("request"),
                "approved": answer.lower() in APPROVING_ANSWERS,
                "answer": answer,
            }
        )


# No workflow timeout: a person may take a while. The human service's `timeout` (if set) bounds
# the wait, and cancelling the task withdraws the question.
workflow = ApprovalWorkflow(timeout=None)
