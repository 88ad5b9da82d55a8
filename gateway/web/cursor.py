"""Cursor paging: `after=<cursor>` continues a list exactly where the previous page ended.

Offset paging skips items when earlier ones leave the list while a reader pages (a queue that
people answer). A cursor names a position in the list's order instead of a count: the sort
value and a unique tie-break of the last item returned. Items that stay in the list are then
seen exactly once, however many others come and go. The cursor is opaque to clients (URL-safe
base64 of a small JSON array), so its contents can change without breaking them.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from gateway.web.errors import ApiError

T = TypeVar("T")
Position = tuple[Any, str]


def encode(value: Any, ident: str) -> str:
    raw = json.dumps([value, ident], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str) -> Position:
    """The position a cursor names; 422 if it is not one of ours."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value, ident = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, TypeError, binascii.Error):
        raise ApiError(
            422, "`after` is not a cursor: pass the `next` of the previous page"
        ) from None
    if not isinstance(ident, str) or not isinstance(value, (int, float, str, type(None))):
        raise ApiError(422, "`after` is not a cursor: pass the `next` of the previous page")
    return value, ident


def decode_time(cursor: str | None) -> tuple[float, str] | None:
    """The position of a cursor of a list ordered by a time (tasks, sessions), or None for
    no cursor; 422 for a cursor of another list."""
    if cursor is None:
        return None
    value, ident = decode(cursor)
    if not isinstance(value, (int, float)):
        raise ApiError(422, "`after` belongs to another list; start again without it")
    return float(value), ident


def page_after(
    items: Iterable[T],
    position: Callable[[T], Position],
    *,
    descending: bool,
    after: str | None,
    offset: int,
    limit: int,
) -> tuple[list[T], str | None]:
    """One page in (value, ident) order after the cursor; and the cursor of the next page
    (None when this page reaches the end)."""
    ordered = sorted(items, key=position, reverse=descending)
    if after is not None:
        mark = decode(after)
        try:
            if descending:
                ordered = [item for item in ordered if position(item) < mark]
            else:
                ordered = [item for item in ordered if position(item) > mark]
        except TypeError:  # a cursor of another list (or sort field): values do not compare
            raise ApiError(
                422, "`after` belongs to another list or sort order; start again without it"
            ) from None
    page = ordered[offset : offset + limit]
    more = len(ordered) > offset + limit
    return page, (encode(*position(page[-1])) if page and more else None)
