"""Pure-ASGI middleware: bearer-token auth, request-body size limit, CORS.

All answer with the gateway's one JSON error shape and never buffer streaming responses.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable, Iterable

import anyio
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.contain import describe, is_our_cancellation
from gateway.web.errors import ApiError

logger = logging.getLogger("gateway.web")


async def _send_error(send: Send, status: int, code: str, detail: str, headers=()) -> None:
    body = json.dumps({"error": code, "detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BearerAuth:
    """Every route but the open ones needs `Authorization: Bearer <token>`.

    Tokens are compared with `hmac.compare_digest` against every configured token, so the time
    taken does not reveal which (or how much of one) matched.
    """

    def __init__(
        self,
        app: ASGIApp,
        tokens: Iterable[str],
        open_paths=("/healthz",),
        open_prefixes: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.tokens = [t.encode() for t in tokens if t]
        self.open_paths = frozenset(open_paths)
        # Folders of static files (the console's page asks for the token itself).
        self.open_prefixes = tuple(p.rstrip("/") + "/" for p in open_prefixes)

    def _open(self, path: str) -> bool:
        return path in self.open_paths or path.startswith(self.open_prefixes)

    def _valid(self, presented: bytes) -> bool:
        ok = False
        for token in self.tokens:
            ok |= hmac.compare_digest(presented, token)
        return ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._open(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = [value for name, value in scope["headers"] if name == b"authorization"]
        if len(headers) > 1:  # which one counts would be a guess: refuse the request
            await _send_error(
                send, 400, "bad_request", "several Authorization headers; send exactly one"
            )
            return
        scheme, _, presented = (headers[0] if headers else b"").partition(b" ")
        if scheme.lower() == b"bearer" and presented and self._valid(presented.strip()):
            await self.app(scope, receive, send)
            return
        await _send_error(
            send,
            401,
            "unauthorized",
            "a valid bearer token is required (Authorization: Bearer <token>)",
            [(b"www-authenticate", b"Bearer")],
        )


class ServiceAuth:
    """The internal endpoints (remote services') need a service token, checked before anything.

    `identify` answers which token a request presents or raises ApiError (403 when remote
    services are off, 401 for a wrong token, 400 for several Authorization headers); the
    answer is left in the request state as `service_owner` for the handler.
    """

    def __init__(
        self, app: ASGIApp, identify: Callable[[Headers], str], paths: Iterable[str]
    ) -> None:
        self.app = app
        self.identify = identify
        self.paths = frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Those endpoints take POST only; other methods go on to their 405.
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        try:
            owner = self.identify(Headers(scope=scope))
        except ApiError as exc:
            headers = [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
            await _send_error(send, exc.status, exc.code, str(exc.detail), headers)
            return
        scope.setdefault("state", {})["service_owner"] = owner
        await self.app(scope, receive, send)


class Cors(CORSMiddleware):
    """Starlette's CORS, but a refused preflight answers in the gateway's JSON error shape."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        headers = {
            k: v for k, v in response.headers.items() if k not in ("content-length", "content-type")
        }
        detail = bytes(response.body).decode()
        return JSONResponse(
            {"error": "bad_request", "detail": detail}, response.status_code, headers=headers
        )


class BodyLimit:
    """Refuse bodies over `max_bytes` with 413, by Content-Length or while streaming in, and
    bodies still incomplete `body_timeout` seconds after the app began reading them with 408
    (a client trickling a body in would otherwise hold its connection and handler forever)."""

    def __init__(self, app: ASGIApp, max_bytes: int, body_timeout: float | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_bytes
            except ValueError:
                await _send_error(send, 400, "bad_request", "invalid Content-Length header")
                return
            if too_big:
                await _send_error(
                    send,
                    413,
                    "payload_too_large",
                    f"the body is larger than the limit of {self.max_bytes} bytes",
                )
                return
        received = 0
        body_done = False
        deadline: float | None = None

        async def limited_receive() -> Message:
            nonlocal received, body_done, deadline
            if body_done or self.body_timeout is None:
                message = await receive()  # e.g. waiting for a disconnect: never timed
            else:
                if deadline is None:
                    deadline = anyio.current_time() + self.body_timeout
                with anyio.move_on_after(deadline - anyio.current_time()) as late:
                    message = await receive()
                if late.cancelled_caught:
                    raise ApiError(
                        408, f"the request body did not arrive within {self.body_timeout:g}s"
                    )
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise ApiError(
                        413, f"the body is larger than the limit of {self.max_bytes} bytes"
                    )
                body_done = body_done or not message.get("more_body", False)
            else:
                body_done = True
            return message

        await self.app(scope, limited_receive, send)


class LastResort:
    """Outermost: an exception nothing else handled still answers 500 in the JSON error shape.

    Starlette's own last handler sees only `Exception`s; this also covers the rest (except our
    own cancellation) and anything raised by the middleware in between. Once a response has
    started there is nothing to answer with, so the error goes on to the server.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except BaseException as exc:
            if started or is_our_cancellation(exc):
                raise
            logger.error(
                "unhandled %s on %s %s",
                describe(exc),
                scope.get("method"),
                scope.get("path"),
                exc_info=exc,
            )
            await _send_error(send, 500, "internal_error", "internal error")
