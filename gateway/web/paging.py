"""The one paging convention of every list endpoint of our API.

A list answers `{"items": [...], "total": N}`: `total` counts everything matching the filters,
before `limit`/`offset`. Items come newest first by default (`order=desc`); `sort` names the
field to order by. Lists that change while someone pages through them (tasks, sessions, a human
queue) also take a cursor: `after=<next of the previous page>` (`CursorQuery`, `CursorPage`,
`paginate_after`; see gateway/web/cursor.py), in the same envelope plus `next`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, Field

from gateway.web import cursor

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


class CursorQuery(PageQuery):
    """A `PageQuery` that can continue where the previous page ended."""

    after: str | None = Field(
        default=None,
        min_length=1,
        max_length=512,
        description="continue after this cursor (the `next` of the previous page, with the same "
        "filters, sort and order): items that stay listed are seen exactly once, however many "
        "others come and go meanwhile",
    )


class CursorPage(Page[T], Generic[T]):
    """A page that says where the next one starts."""

    next: str | None = Field(
        default=None, description="pass as `after` for the following page; null on the last"
    )


def paginate_after(
    items: Iterable[T], query: CursorQuery, position: Callable[[T], tuple[Any, str]]
) -> CursorPage[T]:
    """Order by `position` (the sort value, then a unique id), skip to the cursor, cut a page."""
    everything = list(items)
    page, following = cursor.page_after(
        everything,
        position,
        descending=query.descending,
        after=query.after,
        offset=query.offset,
        limit=query.limit,
    )
    return CursorPage[Any](items=page, total=len(everything), next=following)
