"""Private attributes of services are read straight from pydantic's dict (services.base)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, PrivateAttr

from services.agent import AgentService
from services.base import BaseService, _PrivateRead
from services.component import ComponentService
from services.human.service import HumanService
from services.tool.service import ToolService
from services.workflow import WorkflowService


class _Custom(BaseService):
    """A user's service with private attributes of its own."""

    _seen: list[str] = PrivateAttr(default_factory=list)
    _limit: int = PrivateAttr(default=3)

    def routes(self) -> list[Any]:
        return []

    async def process_message(self, message: Any) -> None:
        return None


def _service_classes() -> list[type[BaseService]]:
    found, todo = [], [BaseService]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_every_plain_private_attribute_of_every_service_class_is_read_directly() -> None:
    classes = _service_classes()
    hosted = {AgentService, ComponentService, HumanService, ToolService, WorkflowService, _Custom}
    assert hosted <= set(classes)
    for cls in classes:
        for name, declared in cls.__private_attributes__.items():
            found = next(c.__dict__[name] for c in cls.__mro__ if name in c.__dict__)
            if hasattr(declared, "__get__"):  # a declared descriptor stays what it was
                assert not isinstance(found, _PrivateRead), (cls, name)
            else:
                assert isinstance(found, _PrivateRead), (cls, name)


def test_reads_and_writes_see_one_value_per_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = _Custom(service_name="a"), _Custom(service_name="b")
    fallbacks: list[str] = []
    original = BaseModel.__getattr__

    def counting(self: BaseModel, name: str) -> Any:
        fallbacks.append(name)
        return original(self, name)  # type: ignore[operator]

    monkeypatch.setattr(BaseModel, "__getattr__", counting)
    first._seen.append("x")
    first._limit = 7
    assert (first._seen, first._limit, second._seen, second._limit) == (["x"], 7, [], 3)
    assert first.__pydantic_private__["_limit"] == 7
    assert first._scopes == {} and first._limiter is None  # the base class's own
    assert fallbacks == []  # none of these reads went through pydantic's fallback
    with pytest.raises(AttributeError, match="_nothing"):
        first._nothing  # noqa: B018
    copy = first.model_copy(deep=True)
    assert copy._seen == ["x"] and copy._seen is not first._seen


def test_a_private_read_before_initialisation_is_pydantics_error() -> None:
    service = _Custom.__new__(_Custom)  # no __init__: no private dict yet
    with pytest.raises(AttributeError):
        service._seen  # noqa: B018
