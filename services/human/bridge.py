"""The bridge between a workflow run that needs a person and a human service.

A step that emits `InputRequiredEvent` becomes a task of the human service (a NEW_TOOL_CALL over
the bus, addressed to the whole service); the workflow task shows `waiting_for_human`; the answer
(COMPLETED_TOOL_CALL) goes back into the run as `HumanResponseEvent`. Nothing polls. The bridge
remembers which runs wait (a restored Context does not re-emit its request) and withdraws the
questions of a run that ends without them (cancelled, timed out, failed).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workflows.events import Event, HumanResponseEvent

from gateway.bus import Consumer
from gateway.messages import (
    ActionTypes,
    QueueMessage,
    TaskDefinition,
    TaskResult,
    TaskStatus,
    ToolCallResult,
    new_id,
)

if TYPE_CHECKING:
    from services.base import BaseService

logger = logging.getLogger("services.human.bridge")

# Where a request's text is looked for, in order (InputRequiredEvent(prefix=...) is the norm).
PROMPT_KEYS = ("prefix", "prompt", "question", "message", "msg")


def request_fields(event: Event) -> dict[str, Any]:
    """Declared fields and free-form ones (events are dict-like)."""
    fields = {name: getattr(event, name) for name in type(event).model_fields}
    fields.update(dict(event))
    return fields


def prompt_text(fields: dict[str, Any]) -> str:
    for key in PROMPT_KEYS:
        value = fields.get(key)
        if isinstance(value, str) and value.strip():
            return value
    if fields:
        return "; ".join(f"{key}: {value}" for key, value in fields.items())
    return "The workflow needs your input."


@dataclass
class _Ask:
    human_task_id: str
    task_id: str
    handler: Any
    fields: dict[str, Any]


class HumanBridge:
    """Asks `human_service` on behalf of `owner`'s runs; answers go in via `ctx.send_event`."""

    def __init__(self, owner: BaseService, human_service: str) -> None:
        self.owner = owner
        self.human_service = human_service
        # Replies are addressed to this message type (a tool call's `source_id`).
        self.reply_type = f"{owner.service_name}.human-replies.{new_id()[:8]}"
        self._asks: dict[str, _Ask] = {}  # human task id -> what to answer
        self._by_task: dict[str, list[str]] = {}  # workflow task id -> its waiting questions
        self._counts: dict[str, int] = {}  # workflow task id -> questions asked so far

    def start(self) -> None:
        self.owner.bus.register_consumer(
            Consumer(message_type=self.reply_type, handler=self._on_message, id_=self.reply_type)
        )

    def waiting(self, task_id: str) -> list[str]:
        """The human task ids a workflow task waits on."""
        return list(self._by_task.get(task_id, ()))

    async def ask(self, task: TaskDefinition, handler: Any, event: Event) -> dict[str, str]:
        """Turn an InputRequiredEvent into a human task; returns ids to add to the event."""
        return await self.ask_fields(task, handler, request_fields(event))

    def questions(self, task_id: str) -> list[dict[str, Any]]:
        """What a run still waits to be told: the fields of its unanswered questions."""
        return [self._asks[h].fields for h in self._by_task.get(task_id, ()) if h in self._asks]

    async def ask_fields(
        self, task: TaskDefinition, handler: Any, fields: dict[str, Any]
    ) -> dict[str, str]:
        """Ask a question from its fields (a restored run does not emit its question again)."""
        count = self._counts.get(task.task_id, 0) + 1
        self._counts[task.task_id] = count
        human_id = f"{task.task_id}-human-{count}"
        self._asks[human_id] = _Ask(human_id, task.task_id, handler, fields)
        self._by_task.setdefault(task.task_id, []).append(human_id)
        await self.owner.report_status(task.task_id, TaskStatus.WAITING_FOR_HUMAN)
        data = TaskDefinition(
            task_id=human_id, input=prompt_text(fields), session_id=task.session_id
        ).model_dump(mode="json")
        data["requested_by"] = {"service": self.owner.service_name, "task_id": task.task_id}
        try:
            await self.owner.bus.publish(
                QueueMessage(
                    publisher_id=self.reply_type,
                    type=self.human_service,
                    action=ActionTypes.NEW_TOOL_CALL,
                    data=data,
                )
            )
        except Exception:
            self._forget(human_id)
            raise
        return {"human_service": self.human_service, "human_task_id": human_id}

    async def withdraw(self, task_id: str) -> None:
        """The workflow task ended: its unanswered questions are cancelled in the human service."""
        self._counts.pop(task_id, None)
        for human_id in self._by_task.pop(task_id, []):
            self._asks.pop(human_id, None)
            try:
                await self.owner.bus.publish(
                    QueueMessage(
                        publisher_id=self.reply_type,
                        type=self.human_service,
                        action=ActionTypes.CANCEL_TASK,
                        data={"task_id": human_id},
                    )
                )
            except Exception as exc:
                logger.warning("could not withdraw human task %s: %s", human_id, exc)

    def _forget(self, human_id: str) -> _Ask | None:
        ask = self._asks.pop(human_id, None)
        if ask is not None:
            ids = self._by_task.get(ask.task_id, [])
            if human_id in ids:
                ids.remove(human_id)
        return ask

    async def _on_message(self, message: QueueMessage) -> None:
        if message.action != ActionTypes.COMPLETED_TOOL_CALL:
            logger.warning("%s ignores %s", self.reply_type, message.action)
            return
        reply = ToolCallResult.model_validate(message.data)
        ask = self._forget(reply.id_)
        if ask is None:
            return  # withdrawn, or answered already
        if reply.is_error:
            await self._fail(ask, reply.result)
            return
        if ask.handler.is_done():
            return
        ask.handler.ctx.send_event(HumanResponseEvent(**{**ask.fields, "response": reply.result}))
        if not self._by_task.get(ask.task_id):
            await self.owner.report_status(ask.task_id, TaskStatus.RUNNING)

    async def _fail(self, ask: _Ask, reason: str) -> None:
        """No answer will come (timed out, cancelled, fn_input failed): the run fails with why."""
        error = (
            f"human task {ask.human_task_id} in {self.human_service!r} ended without an "
            f"answer: {reason}"
        )
        await self.owner.finish_task(
            TaskResult(task_id=ask.task_id, status=TaskStatus.FAILED, error=error)
        )
        await self.owner.handle_message(
            QueueMessage(
                publisher_id=self.reply_type,
                type=self.owner.service_name,
                action=ActionTypes.CANCEL_TASK,
                data={"task_id": ask.task_id},
            )
        )
