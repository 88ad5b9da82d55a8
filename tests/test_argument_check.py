"""A tool's argument check: plain arguments are checked without pydantic, and the answer is
always the one pydantic would give (`services.tool.adapt.ArgumentCheck`)."""

from __future__ import annotations

import math
from typing import Annotated, Any

import pytest
from llama_index.core.tools import FunctionTool
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from services.tool.adapt import ArgumentCheck, BadArguments, plain_fields


class Plain(BaseModel):
    s: str
    i: int
    f: float
    b: bool = False


class Forbidding(Plain):
    model_config = ConfigDict(extra="forbid")


class Strict(Plain):
    model_config = ConfigDict(strict=True)


class NoNaN(Plain):
    model_config = ConfigDict(allow_inf_nan=False)


class Short(Plain):
    model_config = ConfigDict(str_max_length=3)


class Constrained(BaseModel):
    s: Annotated[str, Field(max_length=2)]
    i: int = Field(gt=0)
    f: float = 1.0
    b: bool = False


class FieldValidated(Plain):
    @field_validator("i")
    @classmethod
    def _small(cls, value: int) -> int:
        if value > 10:
            raise ValueError("too big")
        return value


class ModelValidated(Plain):
    @model_validator(mode="after")
    def _positive(self) -> ModelValidated:
        if self.f < 0:
            raise ValueError("negative")
        return self


class Aliased(BaseModel):
    s: str = Field(alias="text")
    i: int = 0
    f: float = 0.0
    b: bool = False


class BadDefault(BaseModel):
    s: str = "x"
    i: int = Field(default="nope", validate_default=True)  # type: ignore[assignment]
    f: float = 0.0
    b: bool = False


class Factory(BaseModel):
    s: str = Field(default_factory=lambda: "made")
    i: int = 0
    f: float = 0.0
    b: bool = False


class Root(BaseModel):  # a field type the plain check does not know
    s: str | None = None
    i: int = 0
    f: float = 0.0
    b: bool = False


SCHEMAS = [
    Plain,
    Forbidding,
    Strict,
    NoNaN,
    Short,
    Constrained,
    FieldValidated,
    ModelValidated,
    Aliased,
    BadDefault,
    Factory,
    Root,
]
NOT_PLAIN = {Strict, NoNaN, Short, Constrained, FieldValidated, ModelValidated, Aliased}
NOT_PLAIN |= {BadDefault, Factory, Root}

VALUES: dict[str, list[Any]] = {
    "s": ["", "abcd", "\ud800", 1, b"x", None, True],
    "i": [0, -5, 11, 2**200, True, 1.0, 1.5, "3", None],
    "f": [0.0, -1.5, math.nan, math.inf, 3, 2**53, 2**53 + 1, -(2**60), 10**400, True, "1"],
    "b": [True, False, 1, 0, "true", None],
}


def kwargs_cases() -> list[dict[str, Any]]:
    base = {"s": "ab", "i": 1, "f": 1.0, "b": True}
    cases = [dict(base), {"i": 1, "f": 1.0}, {}, {"s": "ab"}]
    for name, values in VALUES.items():
        for value in values:
            cases.append({**base, name: value})
    return cases


def tool_with(schema: type[BaseModel]) -> FunctionTool:
    async def fn(**kwargs: Any) -> str:
        return "ok"

    return FunctionTool.from_defaults(async_fn=fn, name="t", description="d", fn_schema=schema)


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: s.__name__)
def test_the_check_refuses_exactly_what_pydantic_refuses(schema: type[BaseModel]) -> None:
    check = ArgumentCheck(tool_with(schema))
    for kwargs in kwargs_cases():
        try:
            schema.model_validate(kwargs)
            valid = True
        except ValidationError:
            valid = False
        try:
            check([], dict(kwargs))
            passed = True
        except BadArguments:
            passed = False
        assert passed == valid, (schema.__name__, kwargs)


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: s.__name__)
def test_only_bare_plain_fields_skip_pydantic(schema: type[BaseModel]) -> None:
    assert (plain_fields(schema) is None) == (schema in NOT_PLAIN)


def test_plain_arguments_make_no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    check = ArgumentCheck(tool_with(Plain))
    calls: list[Any] = []

    def counting(cls: Any, value: Any, **kwargs: Any) -> Any:
        calls.append(value)
        raise AssertionError("pydantic was asked")

    monkeypatch.setattr(Plain, "model_validate", classmethod(counting))
    check([], {"s": "x", "i": 2, "f": 3, "b": True})
    check([], {"s": "x", "i": 2, "f": 0.5})
    assert calls == []
    with pytest.raises(AssertionError, match="pydantic was asked"):
        check([], {"s": "x", "i": "2", "f": 0.5})  # not plain: pydantic decides


def test_an_unexpected_argument_is_still_named() -> None:
    check = ArgumentCheck(tool_with(Plain))
    with pytest.raises(BadArguments, match="unexpected argument"):
        check([], {"s": "x", "i": 1, "f": 1.0, "zzz": 1})
    with pytest.raises(BadArguments, match="i: Input should be a valid integer"):
        check([], {"s": "x", "i": "no", "f": 1.0})


async def _measure(lengths, scale=None, notes=()):  # type: ignore[no-untyped-def]
    """Sum lengths."""
    return sum(lengths) * len(scale or {1: 1})


# As objects, not strings (this module's annotations are strings): llama-index reads them.
_measure.__annotations__ = {
    "lengths": list[Annotated[float, {"unit": "cm"}]],
    "scale": dict[str, Annotated[int, {"unit": "x"}]] | None,
    "notes": tuple[Annotated[str, ["doc"]], ...],
    "return": float,
}


def test_a_field_type_that_cannot_be_hashed_is_left_to_pydantic() -> None:
    """`Annotated` with a dict or list note, inside another type, cannot be hashed (found by
    review: the service could not even be made)."""
    from services.tool.service import ToolService

    tool = FunctionTool.from_defaults(async_fn=_measure)
    ToolService(service_name="m", tools=[tool])  # no TypeError
    check = ArgumentCheck(tool)
    check([], {"lengths": [1.0, 2]})
    with pytest.raises(BadArguments, match="lengths"):
        check([], {"lengths": "no"})


def test_a_schema_rebuilt_since_is_checked_by_pydantic(monkeypatch: pytest.MonkeyPatch) -> None:
    class Later(BaseModel):
        i: int

    check = ArgumentCheck(tool_with(Later))

    class Refusing(BaseModel):
        i: Annotated[int, Field(gt=100)]

    monkeypatch.setattr(Later, "__pydantic_validator__", Refusing.__pydantic_validator__)
    with pytest.raises(BadArguments, match="greater than 100"):
        check([], {"i": 1})
