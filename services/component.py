"""ComponentService: one component (a function, a query engine, a retriever) behind the bus.

llama-index 0.14 removed query pipelines, whose components the reference wraps, so a component
here is any of, checked in this order: an object with `arun_component(**inputs)` (the old
protocol), a query engine (`aquery`), a retriever (`aretrieve`), or a callable taking keyword
inputs. Sync callables run in a worker thread so the event loop never blocks.

Output rule: the value goes through `gateway.jsonable.to_jsonable` (pydantic models dump,
containers recurse, anything else becomes `str()`); `data` is that value when it is a JSON object,
otherwise `{"result": value}`; `result` is the value itself when it is a string, else its JSON.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

from pydantic import field_validator

from gateway.jsonable import to_jsonable
from gateway.messages import TaskDefinition, TaskResult
from services.calling import call, is_async_callable
from services.kwargs import KwargsRunRequest, KwargsService, decode_run_input

# The kwarg that carries the query of a query engine or retriever (or the only kwarg given).
QUERY_KEYS = ("query", "query_str", "str_or_query_bundle", "input", "question")


class ComponentKind(StrEnum):
    ARUN_COMPONENT = "arun_component"
    QUERY_ENGINE = "query_engine"
    RETRIEVER = "retriever"
    ASYNC_CALLABLE = "async_callable"
    SYNC_CALLABLE = "sync_callable"


def component_kind(component: Any) -> ComponentKind:
    if callable(getattr(component, "arun_component", None)):
        return ComponentKind.ARUN_COMPONENT
    if callable(getattr(component, "aquery", None)):
        return ComponentKind.QUERY_ENGINE
    if callable(getattr(component, "aretrieve", None)):
        return ComponentKind.RETRIEVER
    if callable(component):
        if is_async_callable(component):
            return ComponentKind.ASYNC_CALLABLE
        return ComponentKind.SYNC_CALLABLE
    raise ValueError(
        "a component must have arun_component(**inputs), aquery(), aretrieve(), or be a "
        f"callable taking keyword inputs; got {type(component).__name__}"
    )


def query_argument(kwargs: dict[str, Any], kind: ComponentKind) -> Any:
    """A query engine / retriever takes one query: the only kwarg, or one of QUERY_KEYS."""
    if len(kwargs) == 1:
        return next(iter(kwargs.values()))
    for key in QUERY_KEYS:
        if key in kwargs:
            return kwargs[key]
    raise ValueError(f"a {kind.value} takes one query: pass `query` (got {sorted(kwargs)})")


def package_output(task_id: str, value: Any) -> TaskResult:
    """The output rule of the module docstring."""
    plain = to_jsonable(value)
    data = plain if isinstance(plain, dict) else {"result": plain}
    text = plain if isinstance(plain, str) else json.dumps(plain, ensure_ascii=False)
    return TaskResult(task_id=task_id, result=text, data=data, output=plain)


class ComponentRunRequest(KwargsRunRequest):
    """Body of `POST /run`: `kwargs`, or the task form's `input` (a JSON object string)."""


class ComponentService(KwargsService):
    """Serves one component: NEW_TASK input and `/run` kwargs are its keyword inputs."""

    service_type = "component"
    run_request = ComponentRunRequest
    run_summary = "Run the component and wait for its result"

    component: Any
    description: str = "A service that wraps a component."

    @field_validator("component")
    @classmethod
    def _is_component(cls, value: Any) -> Any:
        component_kind(value)
        return value

    @property
    def kind(self) -> ComponentKind:
        return component_kind(self.component)

    async def home(self) -> dict[str, Any]:
        info = await super().home()
        info.update(component_kind=self.kind.value, component=type(self.component).__name__)
        return info

    async def execute(self, task: TaskDefinition, state: dict[str, Any]) -> TaskResult:
        """Decode the inputs (the reference put them in `state["__input_dict__"]`) and run."""
        inputs = state.get("__input_dict__")
        kwargs = inputs if isinstance(inputs, dict) else decode_run_input(task.input)
        return package_output(task.task_id, await self.invoke(kwargs))

    async def invoke(self, kwargs: dict[str, Any]) -> Any:
        component, kind = self.component, self.kind
        if kind is ComponentKind.ARUN_COMPONENT:
            return await call(component.arun_component, **kwargs)
        if kind is ComponentKind.QUERY_ENGINE:
            return await call(component.aquery, query_argument(kwargs, kind))
        if kind is ComponentKind.RETRIEVER:
            return await call(component.aretrieve, query_argument(kwargs, kind))
        return await call(component, **kwargs)
