"""The one paging convention of every list endpoint of our API.

A list answers `{"items": [...], "total": N}`: `total` counts everything matching the filters,
before `limit`/`offset`. Items come newest first by default (`order=desc`); `sort` names the
field to order by. A cursor (`after=`) can be added to `PageQuery` later without changing the
envelope, so clients written against this shape keep working.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, Field

T = TypeVar("T")


class PageQuery(BaseModel):
    """`limit`, `offset`, `sort`, `order`: the query of every list endpoint."""

    limit: int = Field(default=50, ge=1, le=1000, description="at most this many items")
    offset: int = Field(default=0, ge=0, le=10**9, description="skip this many items first")
    sort: Literal["created_at"] = Field(default="created_at", description="field to order by")
    order: Literal["desc", "asc"] = Field(
        default="desc", description="`desc`: newest first (the default); `asc`: oldest first"
    )

    @property
    def descending(self) -> bool:
        return self.order == "desc"


class Page(BaseModel, Generic[T]):
    """One page of a list: the items and how many match in all."""

    items: list[T]
    total: int = Field(ge=0, description="items matching the filters, before paging")


def paginate(
    items: Iterable[T], query: PageQuery, key: Callable[[T], Any] | None = None
) -> Page[T]:
    """Sort (stable; `key` reads the `sort` field), then cut one page out."""
    ordered = list(items)  # in arrival order
    if query.descending:
        ordered.reverse()  # so that ties stay newest first too
    if key is not None:
        ordered.sort(key=key, reverse=query.descending)
    return Page[Any](items=ordered[query.offset : query.offset + query.limit], total=len(ordered))
