"""Tools as the tool service sees them: any llama-index tool made async, its metadata, argument
checks against its schema, and the errors a call can end with."""

from __future__ import annotations

import functools
from typing import Any

import anyio.to_thread
from llama_index.core.tools import AsyncBaseTool, BaseTool, FunctionTool, ToolOutput
from pydantic import BaseModel, ValidationError

from gateway.contain import contained
from gateway.web.errors import readable


class ToolError(Exception):
    """A tool call that could not produce an output; `status` is its HTTP mapping."""

    status = 500
    code = "tool_error"


class UnknownTool(ToolError, LookupError):
    status = 404
    code = "not_found"


class BadArguments(ToolError, ValueError):
    status = 422
    code = "validation_error"


class ToolTimeout(ToolError, TimeoutError):
    status = 504
    code = "gateway_timeout"


# -- tools ----------------------------------------------------------------------------------------
class _SyncToolAdapter(AsyncBaseTool):
    """A synchronous BaseTool run in a worker thread, so it never blocks the event loop."""

    def __init__(self, tool: BaseTool) -> None:
        self.base_tool = tool

    @property
    def metadata(self) -> Any:
        return self.base_tool.metadata

    def call(self, *args: Any, **kwargs: Any) -> ToolOutput:
        return self.base_tool(*args, **kwargs)

    async def acall(self, *args: Any, **kwargs: Any) -> ToolOutput:
        call = contained(self.call)  # converted in the thread (see gateway.contain)
        return await anyio.to_thread.run_sync(functools.partial(call, *args, **kwargs))


def as_async_tool(tool: Any) -> AsyncBaseTool:
    """A tool, or a plain function (wrapped as a FunctionTool), as an async tool."""
    if isinstance(tool, AsyncBaseTool):
        return tool
    if isinstance(tool, BaseTool):
        return _SyncToolAdapter(tool)
    if callable(tool):
        return FunctionTool.from_defaults(fn=tool)
    raise TypeError(f"expected a llama-index tool or a function, got {type(tool).__name__}")


class ToolInfo(BaseModel):
    """A tool as clients and LLMs see it: name, description, JSON schema of its arguments."""

    name: str
    description: str
    parameters: dict[str, Any]
    return_direct: bool = False

    @classmethod
    def of(cls, tool: AsyncBaseTool) -> ToolInfo:
        meta = tool.metadata
        return cls(
            name=meta.get_name(),
            description=meta.description,
            parameters=meta.get_parameters_dict(),
            return_direct=meta.return_direct,
        )


class ArgumentCheck:
    """A tool's argument check, prepared once per tool: what a call re-read from the schema
    every time (its fields, whether it takes extras) does not change."""

    __slots__ = ("_name", "_schema", "_names")

    def __init__(self, tool: AsyncBaseTool) -> None:
        schema = tool.metadata.fn_schema
        self._name = tool.metadata.get_name()
        self._schema = schema
        extra = schema is not None and schema.model_config.get("extra") == "allow"
        self._names = None if schema is None or extra else frozenset(schema.model_fields)

    def __call__(self, args: list[Any], kwargs: dict[str, Any]) -> None:
        """Refuse arguments the tool's schema rejects, with a message naming each problem."""
        schema = self._schema
        if schema is None or args:
            return
        if self._names is not None and not self._names.issuperset(kwargs):
            unexpected = ", ".join(sorted(set(kwargs) - self._names))
            raise BadArguments(f"tool {self._name!r} got unexpected argument(s): {unexpected}")
        try:
            schema.model_validate(kwargs)
        except ValidationError as exc:
            problems = readable(exc, root="arguments")
            raise BadArguments(f"bad arguments for tool {self._name!r}: {problems}") from None
