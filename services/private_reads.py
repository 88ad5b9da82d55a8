"""Private attributes of pydantic models read without a failed lookup first.

pydantic keeps private attributes (`_scopes`, `_limiter`, an event's `_data`...) in
`__pydantic_private__`, not on the class, so every read of one first fails the normal lookup
(Python builds an AttributeError, message and all, and drops it) and then goes through the
model's `__getattr__`, which asks the declaration whether it is a descriptor (a second
AttributeError). ~3,000 instructions per read; a task reads a service's a dozen times, and a
workflow run reads its events' `_data` and `_result` a dozen more. A `PrivateRead` set on the
class is found by the normal lookup and reads the dict. Writes still go through pydantic's
`__setattr__`, which writes the same dict.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class PrivateRead:
    """Reads one private attribute straight from `__pydantic_private__`.

    Only where the instance's own class declares it plain (not a descriptor: pydantic calls a
    descriptor's `__get__`); anywhere else, and before the instance has its private values, it
    steps aside (AttributeError), and the class's own `__getattr__` answers as before.
    """

    __slots__ = ("_name", "_plain")

    def __init__(self, name: str) -> None:
        self._name = name
        self._plain: dict[type, bool] = {}  # per class that reads it: declared plain there?

    def __get__(self, model: BaseModel | None, owner: type | None = None) -> Any:
        if model is None:  # on the class: what pydantic answers there, the declaration
            private = getattr(owner, "__private_attributes__", {})
            return private.get(self._name, self)
        cls = type(model)
        plain = self._plain.get(cls)
        if plain is None:
            plain = self._plain[cls] = _declared_plain(cls, self._name)
        if plain:
            try:
                return model.__pydantic_private__[self._name]  # type: ignore[index]
            except (KeyError, TypeError):  # not initialised yet
                pass
        raise AttributeError(self._name)  # the class's __getattr__ takes over


def _declared_plain(cls: type[BaseModel], name: str) -> bool:
    declared = cls.__private_attributes__.get(name)
    return declared is not None and not hasattr(declared, "__get__")


def read_privates_directly(cls: type[BaseModel]) -> None:
    """Set a `PrivateRead` on `cls` for each of its plain private attributes that nothing in its
    classes defines: an inherited `PrivateRead` serves a subclass too, and whatever else a class
    defines under that name (a property, a method, a mixin's attribute) is found first, as it
    was before, and is left alone."""
    for name in cls.__private_attributes__:
        if _declared_plain(cls, name) and not any(name in c.__dict__ for c in cls.__mro__):
            setattr(cls, name, PrivateRead(name))
