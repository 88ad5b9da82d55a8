"""The one JSON error shape of every response, and the exception handlers that produce it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.bus import BusFull, BusUnavailable, NoConsumer

ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    503: "service_unavailable",
    504: "gateway_timeout",
}


class FieldError(BaseModel):
    """One failed check of a request: where (`body`/`query`/`path` first), what, which rule."""

    loc: list[str]
    msg: str
    type: str


class ErrorBody(BaseModel):
    """The one shape of every error response: `detail` is always one readable string."""

    error: str = Field(description="a stable code, e.g. `not_found`, `validation_error`")
    detail: str = Field(description="what is wrong, for a person")
    errors: list[FieldError] | None = Field(
        default=None, description="validation errors only: one entry per bad field"
    )


class ApiError(Exception):
    """An error with an HTTP status; raised anywhere below a handler."""

    def __init__(
        self,
        status: int,
        detail: Any,
        *,
        code: str | None = None,
        headers: dict | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail if isinstance(detail, str) else str(detail)
        self.code = code or ERROR_CODES.get(status, "error")
        self.headers = headers or {}
        self.errors = errors


def error_response(
    status: int,
    detail: Any,
    code: str | None = None,
    headers: dict | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "error": code or ERROR_CODES.get(status, "error"),
        "detail": detail if isinstance(detail, str) else str(detail),
    }
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, headers=headers)


def field_errors(exc: ValidationError, where: str) -> list[dict[str, Any]]:
    """Pydantic errors as `[{loc, msg, type}]`, `loc` starting with body/query/path."""
    return [
        {
            "loc": [where, *[str(p) for p in err.get("loc", ())]],
            "msg": err.get("msg", ""),
            "type": err.get("type", ""),
        }
        for err in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


def readable(exc: ValidationError, root: str = "value") -> str:
    """`loc: msg; loc: msg`: a validation error as one sentence (config, tool and event checks)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ())) or root}: "
        f"{e.get('msg', '').removeprefix('Value error, ')}"
        for e in exc.errors(include_url=False)
    )


def validation_error(exc: ValidationError, where: str) -> ApiError:
    """A 422 whose `detail` reads `body.kwargs: Input should be ...; ...` and whose `errors`
    keeps the structured list for programs."""
    errors = field_errors(exc, where)
    parts = []
    for err in errors[:5]:
        path = ".".join(err["loc"]) or where
        parts.append(f"{path}: {err['msg']}")
    if len(errors) > 5:
        parts.append(f"and {len(errors) - 5} more")
    return ApiError(422, "; ".join(parts) or f"invalid {where}", errors=errors)


# -- exception handlers installed on the app ----------------------------------------------------
async def handle_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.detail, exc.code, exc.headers, exc.errors)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, exc.detail, headers=getattr(exc, "headers", None))


async def handle_bus_full(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BusFull)
    retry = str(max(1, int(round(exc.retry_after))))
    return error_response(503, str(exc), headers={"Retry-After": retry})


async def handle_bus_unavailable(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BusUnavailable)
    retry = str(max(1, int(round(exc.retry_after))))
    return error_response(503, str(exc), headers={"Retry-After": retry})


async def handle_no_consumer(request: Request, exc: Exception) -> Response:
    return error_response(503, str(exc), headers={"Retry-After": "1"})


EXCEPTION_HANDLERS: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
    ApiError: handle_api_error,
    HTTPException: handle_http_exception,
    BusFull: handle_bus_full,
    NoConsumer: handle_no_consumer,
    BusUnavailable: handle_bus_unavailable,
}
