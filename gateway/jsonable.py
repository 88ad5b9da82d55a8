"""One rule for turning arbitrary Python results into JSON values."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel


def to_jsonable(value: Any) -> Any:
    """Pydantic models dump, containers recurse, JSON scalars pass, anything else becomes str()."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, BaseModel):
        try:
            return value.model_dump(mode="json")
        except Exception:
            return str(value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    return str(value)


def result_text(value: Any) -> str:
    """The `result` string of a TaskResult: strings as they are, other values as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(to_jsonable(value), ensure_ascii=False)


def event_fields(event: Any) -> dict[str, Any]:
    """A llama-index event's fields as one flat JSON object.

    Events keep extra keyword fields in a private `_data` dict, which `model_dump` shows as a
    `{"_data": {...}}` wrapper; our event payloads carry those fields directly instead.
    """
    try:
        dumped = event.model_dump(mode="json")
    except Exception:
        return {"repr": repr(event)}
    extra = dumped.pop("_data", None)
    if isinstance(extra, dict):
        for key, value in extra.items():
            dumped.setdefault(str(key), to_jsonable(value))
    return dumped
