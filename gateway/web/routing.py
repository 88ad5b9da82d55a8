"""HTTP plumbing shared by the control plane and every service.

`api_route` wraps a handler so that its body and query are validated by pydantic models, its
return value is serialized, and every failure becomes one JSON error shape:
`{"error": code, "detail": ...}`. The models are kept on the route for the OpenAPI document.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.web.errors import ApiError, validation_error

M = TypeVar("M", bound=BaseModel)


# -- request parsing -----------------------------------------------------------------------------
def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) == len(pairs):  # the usual case, checked at C speed
        return found
    seen: set[str] = set()
    for key, _ in pairs:  # name the first repeated key
        if key in seen:
            break
        seen.add(key)
    raise ApiError(400, f"duplicate key {key!r} in JSON body")


# Deeper documents are refused: pydantic cannot serialize past ~250 levels and the stdlib json
# module recurses, so a deeper body accepted now would make later reads of it fail with 500.
MAX_JSON_DEPTH = 128

# A `\\uD800`-`\\uDFFF` escape: the body may hold a lone surrogate, which no response can encode.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _deeper_than(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _has_lone_surrogate(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _reject_constant(name: str) -> Any:
    raise ApiError(400, f"{name} is not valid JSON (RFC 8259 has no NaN or Infinity)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ApiError(400, f"the number {text[:40]!r} is out of range")
    return value


# Built once: `json.loads` with hooks would build a decoder and its scanner on every call.
_DECODER = json.JSONDecoder(
    object_pairs_hook=_reject_duplicate_keys,
    parse_constant=_reject_constant,
    parse_float=_finite_float,
)


async def read_json(request: Request) -> Any:
    """The request body as JSON, or a 4xx saying what is wrong with it."""
    content_type = ""
    for name, value in request.scope["headers"]:  # the first, as `request.headers.get` would
        if name == b"content-type":
            content_type = value.decode("latin-1")
            break
    media = content_type.split(";")[0].strip().lower()
    if media and media != "application/json" and not media.endswith("+json"):
        raise ApiError(415, f"expected an application/json body, got {media!r}")
    return decode_json(await read_body(request))


async def read_body(request: Request) -> bytes:
    """The whole body, straight off `receive` (`Request.body()` reads it through an async
    generator), and left where `Request.body()` finds it."""
    chunks: list[bytes] = []
    while True:
        message = await request.receive()
        kind = message["type"]
        if kind == "http.request":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        elif kind == "http.disconnect":  # what `Request.stream()` raises
            raise ClientDisconnect()
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    request._body = body  # Starlette's own cache of the body
    return body


def decode_json(raw: bytes) -> Any:
    """A body as strict JSON (RFC 8259, no duplicate keys, representable), or a 400 saying why."""
    if not raw.strip():
        raise ApiError(400, "the request body is empty; a JSON document is required")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"the body is not valid UTF-8 (byte {exc.start})") from None
    try:
        if text.startswith("\ufeff"):  # what `json.loads` checks before decoding
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        value = _DECODER.decode(text)
    except RecursionError:
        raise ApiError(400, "the JSON body is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise ApiError(
            400, f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except ValueError as exc:  # e.g. an integer literal longer than int() accepts
        raise ApiError(400, f"malformed JSON: {exc}") from None
    if text.count("{") + text.count("[") > MAX_JSON_DEPTH and _deeper_than(value, MAX_JSON_DEPTH):
        raise ApiError(400, f"the JSON body is nested deeper than {MAX_JSON_DEPTH} levels")
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(value):
        raise ApiError(400, "the JSON body holds a lone UTF-16 surrogate (\\uD800-\\uDFFF)")
    return value


async def parse_body(request: Request, model: type[M]) -> M:
    data = await read_json(request)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, "body") from None


_NO_QUERY: dict[str, Any] = {}


def parse_query(request: Request, model: type[M]) -> M:
    raw = request.scope.get("query_string")
    try:
        if not raw:  # the usual case: no query to parse
            return model.model_validate(_NO_QUERY)
        return model.model_validate(query_dict(raw))
    except ValidationError as exc:
        raise validation_error(exc, "query") from None


def query_dict(raw: bytes) -> dict[str, str]:
    """`dict(request.query_params)` (a repeated name keeps its last value) without building
    Starlette's multidict first: a third of the time."""
    return dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True))


# -- responses -----------------------------------------------------------------------------------
@functools.cache
def _list_adapter(model: type[BaseModel]) -> TypeAdapter[Any]:
    return TypeAdapter(list[model])  # type: ignore[valid-type]


class JsonBytes(bytes):
    """A handler's answer already written as JSON (e.g. `TaskRecord.view_json()`): sent as is."""


def json_body(value: Any) -> bytes:
    """A handler's return value as JSON: models through pydantic, the rest as JSONResponse would."""
    if isinstance(value, JsonBytes):
        return value
    if isinstance(value, BaseModel):
        return value.__pydantic_serializer__.to_json(value)
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        return _list_adapter(type(value[0])).dump_json(value)
    return json.dumps(
        value, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode()


async def send_json(
    send: Send, body: bytes, status_code: int, extra: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    """What a Starlette `Response(body, media_type="application/json")` sends, without building
    one: the same two messages and headers (then `extra`)."""
    headers = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
    headers += extra
    await send({"type": "http.response.start", "status": status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# -- routes with metadata ------------------------------------------------------------------------
@dataclass
class RouteDoc:
    """What the OpenAPI document needs to know about a route."""

    summary: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: Any = None
    status_code: int = 200
    errors: Sequence[int] = field(default_factory=tuple)
    tags: Sequence[str] = field(default_factory=tuple)
    stream: bool = False
    responses: dict[int, Any] = field(default_factory=dict)
    # Success bodies that are not our JSON or TaskEvent SSE: media type -> the model of each
    # SSE frame's `data` (for text/event-stream) or None (any text, e.g. NDJSON).
    content: dict[str, type[BaseModel] | None] | None = None


class _Endpoint:
    """The ASGI app of an `api_route`: parse the request, call the handler, send its answer.

    An ASGI app, not a Starlette endpoint function: Starlette would wrap that in a second
    exception-handling layer (the app's ExceptionMiddleware has the same handlers) and answer
    through a Response object; here a JSON answer is two `send` calls.
    """

    __slots__ = ("handler", "body", "query", "status_code", "plain")

    def __init__(
        self,
        handler: Callable[..., Awaitable[Any]],
        body: type[BaseModel] | None,
        query: type[BaseModel] | None,
        status_code: int,
    ) -> None:
        self.handler = handler
        self.body = body
        self.query = query
        self.status_code = status_code
        # Statuses whose Response carries a Content-Length (no 1xx, 204, 304).
        self.plain = status_code >= 200 and status_code not in (204, 304)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        kwargs: dict[str, Any] = {}
        if self.body is not None:
            kwargs["body"] = await parse_body(request, self.body)
        if self.query is not None:
            kwargs["query"] = parse_query(request, self.query)
        value = await self.handler(request, **kwargs)
        if isinstance(value, Response):
            await value(scope, receive, send)
        elif self.plain:
            await send_json(send, json_body(value), self.status_code)
        else:
            await Response(json_body(value), self.status_code, media_type="application/json")(
                scope, receive, send
            )


def api_route(
    path: str,
    handler: Callable[..., Awaitable[Any]],
    *,
    methods: Sequence[str] = ("GET",),
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    response: Any = None,
    status_code: int = 200,
    summary: str | None = None,
    errors: Sequence[int] = (),
    tags: Sequence[str] = (),
    name: str | None = None,
    stream: bool = False,
    responses: dict[int, Any] | None = None,
    content: dict[str, type[BaseModel] | None] | None = None,
) -> Route:
    """A Starlette Route whose handler receives `(request, body=..., query=...)` parsed."""

    endpoint = _Endpoint(handler, body, query, status_code)
    route = Route(path, endpoint, methods=list(methods), name=name or handler.__name__)
    doc_summary = summary or (handler.__doc__ or handler.__name__).strip().splitlines()[0]
    route.doc = RouteDoc(  # type: ignore[attr-defined]
        summary=doc_summary,
        body=body,
        query=query,
        response=response,
        status_code=status_code,
        errors=tuple(errors),
        tags=tuple(tags),
        stream=stream,
        responses=dict(responses or {}),
        content=content,
    )
    return route
