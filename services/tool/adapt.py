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


# Field types a value can be checked against without pydantic: the exact class, which pydantic's
# default (lax) mode takes as it is. A float field takes an int too, but only one a float holds
# exactly (pydantic refuses an int too large for a float).
_PLAIN_TYPES = frozenset({str, int, bool, float})
_EXACT_INT = 2**53
# model_config keys that change nothing a plain field's check decides (`extra` is checked first)
_NEUTRAL_CONFIG = frozenset({"extra", "title", "json_schema_extra"})
PlainFields = tuple[dict[str, type], frozenset[str]]


def _own(cls: type, name: str) -> bool:
    """Does `cls` (or a class between it and BaseModel) define `name` itself?"""
    return getattr(getattr(cls, name), "__func__", None) is not getattr(
        getattr(BaseModel, name), "__func__", None
    )


def plain_fields(schema: type[BaseModel]) -> PlainFields | None:
    """(class per field, required names) when every field of `schema` is a bare
    str, int, float or bool with nothing else said about it: no constraint, alias, validator,
    default to compute or setting that could refuse a value of those classes, and no way of
    validating of the schema's own. Else None: pydantic decides."""
    if not schema.__pydantic_complete__ or not _NEUTRAL_CONFIG.issuperset(schema.model_config):
        return None
    decorators = schema.__pydantic_decorators__
    if (
        decorators.validators
        or decorators.field_validators
        or decorators.root_validators
        or decorators.model_validators
        or schema.__pydantic_root_model__
        or schema.model_post_init is not BaseModel.model_post_init
        or _own(schema, "model_validate")
        or _own(schema, "__get_pydantic_core_schema__")
    ):
        return None
    accepted: dict[str, type] = {}
    for name, info in schema.model_fields.items():
        annotation = info.annotation  # not always hashable: list[Annotated[int, {...}]]
        if (
            type(annotation) is not type
            or annotation not in _PLAIN_TYPES
            or info.metadata
            or info.alias
            or info.validation_alias
            or info.validate_default
            or info.default_factory is not None
        ):
            return None
        accepted[name] = annotation
    required = frozenset(n for n, info in schema.model_fields.items() if info.is_required())
    return accepted, required


class ArgumentCheck:
    """A tool's argument check, prepared once per tool: what a call re-read from the schema
    every time (its fields, whether it takes extras) does not change."""

    __slots__ = ("_name", "_schema", "_names", "_plain", "_required", "_validator")

    def __init__(self, tool: AsyncBaseTool) -> None:
        schema = tool.metadata.fn_schema
        self._name = tool.metadata.get_name()
        self._schema = schema
        extra = schema is not None and schema.model_config.get("extra") == "allow"
        self._names = None if schema is None or extra else frozenset(schema.model_fields)
        plain = None if self._names is None else plain_fields(schema)  # type: ignore[arg-type]
        self._plain, self._required = plain if plain is not None else (None, frozenset())
        # what the fields were read from: a schema rebuilt since is left to pydantic
        self._validator = getattr(schema, "__pydantic_validator__", None)

    def __call__(self, args: list[Any], kwargs: dict[str, Any]) -> None:
        """Refuse arguments the tool's schema rejects, with a message naming each problem."""
        schema = self._schema
        if schema is None or args:
            return
        if self._names is not None and not self._names.issuperset(kwargs):
            unexpected = ", ".join(sorted(set(kwargs) - self._names))
            raise BadArguments(f"tool {self._name!r} got unexpected argument(s): {unexpected}")
        if (
            self._plain is not None
            and schema.__pydantic_validator__ is self._validator
            and self._plainly_valid(kwargs)
        ):
            return  # what pydantic would take as it is: no model made to say so
        try:
            schema.model_validate(kwargs)
        except ValidationError as exc:
            problems = readable(exc, root="arguments")
            raise BadArguments(f"bad arguments for tool {self._name!r}: {problems}") from None

    def _plainly_valid(self, kwargs: dict[str, Any]) -> bool:
        """Every required argument given, each of the class of its field (`plain_fields`), or
        an int a float field holds exactly. False means only "ask pydantic", which also words
        the errors."""
        if not self._required.issubset(kwargs):
            return False
        plain = self._plain
        assert plain is not None
        for name, value in kwargs.items():
            cls = type(value)
            if cls is not plain[name] and (
                cls is not int or plain[name] is not float or not -_EXACT_INT <= value <= _EXACT_INT
            ):
                return False
        return True
