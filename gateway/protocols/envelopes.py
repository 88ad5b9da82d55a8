"""Workflow events as the llama-agents protocol writes them: `{value, qualified_name, type, types}`.

The protocol names an event by its class name (`type`), its dotted path (`qualified_name`, kept
for older clients) and the Event classes it derives from (`types`), so a client can match a
subclass of `StopEvent` as a stop. Incoming events are resolved only against the classes the
target workflow declares: a client never picks an arbitrary class by its dotted path.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError
from workflows.events import Event, StopEvent

from gateway.web.errors import readable

STOP = "workflows.events.StopEvent"


def describe(event_type: type[Event]) -> dict[str, Any]:
    """The class metadata of an envelope."""
    parents = []
    for cls in event_type.__mro__[1:]:
        if cls is Event:
            break
        if isinstance(cls, type) and issubclass(cls, Event):
            parents.append(cls.__name__)
    return {
        "qualified_name": f"{event_type.__module__}.{event_type.__name__}",
        "type": event_type.__name__,
        "types": parents or None,
    }


def envelope_of(event: Event) -> dict[str, Any]:
    return {"value": event.model_dump(mode="json"), **describe(type(event))}


def stop_envelope(result: Any) -> dict[str, Any]:
    """The envelope of a plain `StopEvent(result=...)`, from its JSON result."""
    return {"value": {"result": result}, **describe(StopEvent)}


def failure_envelope(error: str | None, cancelled: bool) -> dict[str, Any]:
    """The terminal event of a run that did not complete (failed, timed out or cancelled)."""
    if cancelled:
        return {
            "value": {},
            "qualified_name": "workflows.events.WorkflowCancelledEvent",
            "type": "WorkflowCancelledEvent",
            "types": ["StopEvent"],
        }
    kind, _, message = (error or "").partition(": ")
    if not message:
        kind, message = "Error", error or ""
    return {
        "value": {"exception": {"exception_type": kind, "exception_message": message}},
        "qualified_name": "workflows.events.WorkflowFailedEvent",
        "type": "WorkflowFailedEvent",
        "types": ["StopEvent"],
    }


def read_event(
    raw: Any, known: dict[str, type[Event]], bare_as: type[Event] | None = None
) -> tuple[type[Event], dict[str, Any]]:
    """Resolve a client's event: an envelope (`type` or `qualified_name` + `value`, or legacy
    `data`), a JSON string of one, or — with `bare_as` — a plain object of `bare_as`'s fields.

    Returns the class and the validated value; raises ValueError with a readable reason.
    """
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise ValueError("the event must be a JSON object or a JSON string of one") from None
        except RecursionError:  # a string body escapes the request's nesting limit
            raise ValueError("the event is nested too deeply") from None
    if not isinstance(raw, dict):
        raise ValueError("the event must be a JSON object or a JSON string of one")
    # As the protocol's own server does: an object without `value` that does not name both its
    # type and qualified name is the bare fields of the expected (start) event.
    unqualified = ("qualified_name" not in raw or "type" not in raw) and "value" not in raw
    if unqualified and bare_as is not None:
        return bare_as, _validated(bare_as, raw)
    value = raw.get("value", raw.get("data", {}))
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ValueError("the event's `value` must be a JSON object")
    name = raw.get("type")
    if name is None and raw.get("qualified_name"):
        name = str(raw["qualified_name"]).rpartition(".")[2]
        wanted = str(raw["qualified_name"])
        event_type = known.get(name)
        if event_type is None or describe(event_type)["qualified_name"] != wanted:
            raise ValueError(f"event type {wanted} is not declared by this workflow")
    if not isinstance(name, str) or name not in known:
        accepted = ", ".join(sorted(known)) or "none"
        raise ValueError(f"invalid event type {name!r}; expected one of: {accepted}")
    return known[name], _validated(known[name], value)


def _validated(event_type: type[Event], value: dict[str, Any]) -> dict[str, Any]:
    try:
        event_type.model_validate(value)
    except ValidationError as exc:
        raise ValueError(f"invalid {event_type.__name__}: {readable(exc)}") from None
    return value


def start_kwargs(event_type: type[Event], value: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments `Workflow.run` turns back into this start event."""
    event = event_type.model_validate(value)
    fields = {k: v for k, v in event.model_dump(mode="json").items() if k != "_data"}
    extra = getattr(event, "_data", None)
    if isinstance(extra, dict):
        fields.update(json.loads(json.dumps(extra, default=str)))
    return fields
