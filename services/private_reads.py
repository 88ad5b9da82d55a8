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

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

# `__getattr__`s that answer a private name exactly as pydantic's does (see `answers_as_pydantic`).
_LIKE_PYDANTIC: set[Callable[..., Any]] = {BaseModel.__getattr__}
_CACHE = "__private_reads__"  # in each reading class's own __dict__: name -> how it is read
_READ_THE_DICT = object()
_ASK_GETATTR = object()


class PrivateRead:
    """Reads one private attribute straight from `__pydantic_private__`.

    What a read does is settled once per concrete class, kept in that class (so a class made at
    run time can still be collected), and is what it did before the descriptor was there:
    - a class in the MRO defines the name (a property, a method, a mixin's attribute, even one
      listed after the model): that, as the normal lookup would have found it;
    - the class declares it plain and its `__getattr__` is pydantic's: the dict;
    - otherwise (a descriptor declared, the class's own `__getattr__`, no private values yet):
      AttributeError, and the class's `__getattr__` answers.
    """

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __get__(self, model: BaseModel | None, owner: type | None = None) -> Any:
        if model is None:  # on the class: what pydantic answers there, the declaration
            private = getattr(owner, "__private_attributes__", {})
            return private.get(self._name, self)
        cls = type(model)
        try:
            how = cls.__dict__[_CACHE][self._name]
        except KeyError:
            how = _settle(cls, self._name)
        if how is _READ_THE_DICT:
            try:
                return model.__pydantic_private__[self._name]  # type: ignore[index]
            except (KeyError, TypeError):  # not initialised yet
                pass
        elif how is not _ASK_GETATTR:  # defined by a class further along the MRO
            get = getattr(type(how), "__get__", None)
            return how if get is None else get(how, model, cls)
        raise AttributeError(self._name)  # the class's __getattr__ takes over


def _settle(cls: type[BaseModel], name: str) -> Any:
    defined = [c.__dict__[name] for c in cls.__mro__ if name in c.__dict__]
    others = [found for found in defined if not isinstance(found, PrivateRead)]
    if others:
        how = others[0]
    elif _declared_plain(cls, name) and getattr(cls, "__getattr__", None) in _LIKE_PYDANTIC:
        how = _READ_THE_DICT
    else:
        how = _ASK_GETATTR
    cache = cls.__dict__.get(_CACHE)
    if cache is None:
        cache = {}
        setattr(cls, _CACHE, cache)
    cache[name] = how
    return how


def _declared_plain(cls: type[BaseModel], name: str) -> bool:
    declared = cls.__private_attributes__.get(name)
    return declared is not None and not hasattr(declared, "__get__")


def answers_as_pydantic(getattr_: Callable[..., Any]) -> None:
    """Vouch that a class's own `__getattr__` answers private names as pydantic's does (e.g. by
    handing them to it), so its classes may read them directly too."""
    _LIKE_PYDANTIC.add(getattr_)


def read_privates_directly(cls: type[BaseModel]) -> None:
    """Set a `PrivateRead` on `cls` for each of its plain private attributes that nothing in its
    classes defines: an inherited `PrivateRead` serves a subclass too, and whatever else a class
    defines under that name (a property, a method, a mixin's attribute) is left alone."""
    for name in cls.__private_attributes__:
        if _declared_plain(cls, name) and not any(name in c.__dict__ for c in cls.__mro__):
            setattr(cls, name, PrivateRead(name))
