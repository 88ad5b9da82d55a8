"""Private attributes read straight from pydantic's dict (services.private_reads): services'
and llama-index events'."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, PrivateAttr

from services import private_reads
from services.agent import AgentService
from services.base import BaseService
from services.component import ComponentService
from services.human.service import HumanService
from services.prepared import prepare_events
from services.private_reads import PrivateRead, read_privates_directly
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
            if not hasattr(declared, "__get__"):  # a descriptor is pydantic's to read
                found = next(c.__dict__[name] for c in cls.__mro__ if name in c.__dict__)
                assert isinstance(found, PrivateRead), (cls, name)


def read_directly(model: BaseModel, *names: str) -> bool:
    """Are these private attributes of `model` read from the dict, not via `__getattr__`?"""
    for name in names:
        getattr(model, name)
    settled = type(model).__dict__.get("__private_reads__", {})
    return all(settled.get(name) is private_reads._READ_THE_DICT for name in names)


def test_reads_and_writes_see_one_value_per_instance() -> None:
    first, second = _Custom(service_name="a"), _Custom(service_name="b")
    first._seen.append("x")
    first._limit = 7
    assert (first._seen, first._limit, second._seen, second._limit) == (["x"], 7, [], 3)
    assert first.__pydantic_private__["_limit"] == 7
    assert first._scopes == {} and first._limiter is None  # the base class's own
    assert read_directly(first, "_seen", "_limit", "_scopes", "_limiter")
    with pytest.raises(AttributeError, match="_nothing"):
        first._nothing  # noqa: B018
    copy = first.model_copy(deep=True)
    assert copy._seen == ["x"] and copy._seen is not first._seen


def test_a_private_read_before_initialisation_is_pydantics_error() -> None:
    service = _Custom.__new__(_Custom)  # no __init__: no private dict yet
    with pytest.raises(AttributeError):
        service._seen  # noqa: B018


class _Lookup:
    """A descriptor default: pydantic calls its __get__ on every read."""

    def __get__(self, model: Any, owner: Any = None) -> str:
        return "from the descriptor"


class _Redeclared(_Custom):
    """Redeclares a parent's plain private attribute, once plain and once as a descriptor."""

    _limit: int = PrivateAttr(default=9)
    _seen: Any = PrivateAttr(default=_Lookup())


def test_a_subclass_redeclaring_a_private_attribute_reads_its_own_declaration() -> None:
    service = _Redeclared(service_name="r")
    assert service._limit == 9 and _Custom(service_name="c")._limit == 3
    assert service._seen == "from the descriptor"  # pydantic's way, not the stored default


class _OwnGetattr(BaseModel):
    _value: int = PrivateAttr(default=1)

    def __getattr__(self, name: str) -> Any:
        if name == "_value" and self.__pydantic_private__ is None:
            return "own answer"
        return super().__getattr__(name)  # type: ignore[misc]


def test_a_model_without_its_private_values_is_answered_by_its_own_getattr() -> None:
    read_privates_directly(_OwnGetattr)
    assert _OwnGetattr()._value == 1
    assert _OwnGetattr.model_construct()._value == 1  # model_construct sets the defaults
    bare = _OwnGetattr.__new__(_OwnGetattr)
    object.__setattr__(bare, "__pydantic_private__", None)
    assert bare._value == "own answer"


def test_events_read_their_private_attributes_directly_and_behave_as_before() -> None:
    from workflows.events import DictLikeModel, Event, StartEvent, StopEvent

    assert prepare_events()
    assert isinstance(DictLikeModel.__dict__["_data"], PrivateRead)
    assert isinstance(StopEvent.__dict__["_result"], PrivateRead)

    class Asked(Event):
        question: str = "?"

    start, stop, asked = StartEvent(message="hi"), StopEvent(result=5), Asked(extra=1)
    assert (start.message, start.get("message"), start._data) == ("hi", "hi", {"message": "hi"})
    assert (stop.result, stop._result, asked.question, asked.extra) == (5, 5, "?", 1)
    assert read_directly(start, "_data") and read_directly(stop, "_data", "_result")
    assert read_directly(asked, "_data")
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        start.nothing  # noqa: B018
    assert asked.model_dump() == {"question": "?", "_data": {"extra": 1}}
    assert StopEvent.model_validate({"result": 5}).result == 5


def test_what_a_subclass_or_mixin_defines_under_a_private_name_is_found_first() -> None:
    class WithProperty(_Custom):
        @property
        def _publisher_id(self) -> str:
            return "property"

    class WithMethod(_Custom):
        def _http(self) -> str:
            return "method"

    class Mixin:
        @property
        def _host(self) -> str:
            return "mixin"

    class Mixed(Mixin, _Custom):
        pass

    assert WithProperty(service_name="p")._publisher_id == "property"
    assert WithProperty(service_name="p").publisher_id.endswith("-property")
    assert WithMethod(service_name="m")._http() == "method"
    assert Mixed(service_name="x")._host == "mixin"
    assert Mixed(service_name="x")._scopes == {}  # the rest still read directly


def test_on_the_class_a_private_name_is_still_its_declaration() -> None:
    assert BaseService._scopes.get_default() == {}
    assert _Custom._limit.get_default() == 3


class _Mixin:
    @property
    def _http(self) -> str:
        return "mixin client"


class _GetattrOfItsOwn(_Custom):
    def __getattr__(self, name: str) -> Any:
        if name == "_limit":
            return "its own answer"
        return super().__getattr__(name)  # type: ignore[misc]


def test_a_mixin_after_the_model_and_a_getattr_of_its_own_answer_as_before() -> None:
    from workflows.events import StopEvent

    class AfterTheModel(_Custom, _Mixin):
        pass

    class Summary:
        @property
        def _result(self) -> str:
            return "from the mixin"

    class Done(StopEvent, Summary):
        pass

    prepare_events()
    assert AfterTheModel(service_name="m")._http == "mixin client"
    assert AfterTheModel(service_name="m")._limit == 3
    assert Done(result="stored")._result == "from the mixin"
    assert _GetattrOfItsOwn(service_name="g")._limit == "its own answer"


def test_event_classes_made_at_run_time_can_be_collected() -> None:
    import gc
    import weakref

    from workflows.events import StopEvent

    prepare_events()
    made = []
    for i in range(20):
        cls = type(f"Made{i}", (StopEvent,), {"__module__": __name__})
        event = cls(result=i)
        assert (event._data, event._result) == ({}, i)
        made.append(weakref.ref(cls))
        cls = event = None  # type: ignore[assignment]
    gc.collect()
    assert sum(ref() is not None for ref in made) == 0
