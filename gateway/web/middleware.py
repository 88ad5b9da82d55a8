"""Pure-ASGI middleware: the gate (body limits, service and bearer tokens), CORS, last resort.

All answer with the gateway's one JSON error shape and never buffer streaming responses.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Callable, Iterable

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.contain import describe, is_our_cancellation
from gateway.web.deadlines import BodyDeadlines, BodyRead
from gateway.web.errors import ApiError
from gateway.web.routing import send_json

logger = logging.getLogger("gateway.web")


async def _send_error(send: Send, status: int, code: str, detail: str, headers=()) -> None:
    await send_json(send, json.dumps({"error": code, "detail": detail}).encode(), status, headers)


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


class Gate:
    """Every check a request passes before the routes, in one layer (one call and one receive
    wrapper per request, not one per check), in this order:

    - the body limit: over `max_bytes` is 413, by Content-Length or while streaming in, and a
      body still incomplete `body_timeout` seconds after the app began reading it is 408 (a
      client trickling a body in would otherwise hold its connection and handler forever);
    - the internal endpoints (`internal`, POST only: other methods go on to their 405) need a
      service token: `identify` answers whose it is or raises ApiError (403 when remote
      services are off, 401 for a wrong token, 400 for several Authorization headers); the
      answer is left in the request state as `service_owner` for the handler;
    - with `tokens`, every other path but the open ones needs `Authorization: Bearer <token>`,
      compared with `hmac.compare_digest` against every token, so that the time taken does not
      reveal which (or how much of one) matched.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        body_timeout: float | None = None,
        identify: Callable[[Headers], str],
        internal: Iterable[str],
        tokens: Iterable[str] = (),
        open_paths: Iterable[str] = ("/healthz",),
        open_prefixes: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self._too_big = f"the body is larger than the limit of {max_bytes} bytes"
        self.deadlines = None if body_timeout is None else BodyDeadlines(body_timeout)
        self.identify = identify
        self.internal = frozenset(internal)
        self.tokens = [t.encode() for t in tokens if t]
        self.open_paths = frozenset(open_paths)
        # Folders of static files (the console's page asks for the token itself).
        self.open_prefixes = tuple(p.rstrip("/") + "/" for p in open_prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = self._refusal(scope)
        if refused is not None:
            await _send_error(send, *refused)
            return
        await self.app(scope, self._limited(receive), send)

    def _refusal(self, scope: Scope) -> tuple[int, str, str, list] | None:
        """Why the request is refused before it reaches a route, or None."""
        declared: bytes | None = None
        authorization: list[bytes] = []
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value  # the last one, as a dict of the headers would keep
            elif name == b"authorization":
                authorization.append(value)
        if declared is not None:
            try:
                too_big = int(declared) > self.max_bytes
            except ValueError:
                return 400, "bad_request", "invalid Content-Length header", []
            if too_big:
                return 413, "payload_too_large", self._too_big, []
        path = scope["path"]
        if path in self.internal:  # never a bearer token: a service token, on POST
            if scope["method"] == "POST":
                return self._service_refusal(scope)
        elif self.tokens and not self._open(path):
            return self._bearer_refusal(authorization)
        return None

    def _service_refusal(self, scope: Scope) -> tuple[int, str, str, list] | None:
        try:
            owner = self.identify(Headers(scope=scope))
        except ApiError as exc:
            headers = [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
            return exc.status, exc.code, str(exc.detail), headers
        scope.setdefault("state", {})["service_owner"] = owner
        return None

    def _open(self, path: str) -> bool:
        return path in self.open_paths or path.startswith(self.open_prefixes)

    def _bearer_refusal(self, authorization: list[bytes]) -> tuple[int, str, str, list] | None:
        if len(authorization) > 1:  # which one counts would be a guess: refuse the request
            return 400, "bad_request", "several Authorization headers; send exactly one", []
        scheme, _, presented = (authorization[0] if authorization else b"").partition(b" ")
        if scheme.lower() == b"bearer" and presented and self._valid(presented.strip()):
            return None
        detail = "a valid bearer token is required (Authorization: Bearer <token>)"
        return 401, "unauthorized", detail, [(b"www-authenticate", b"Bearer")]

    def _valid(self, presented: bytes) -> bool:
        ok = False
        for token in self.tokens:
            ok |= hmac.compare_digest(presented, token)
        return ok

    def _limited(self, receive: Receive) -> Receive:
        """`receive`, counting the body against the limit and timing it against the deadline."""
        deadlines = self.deadlines
        received = 0
        read: BodyRead | None = None  # from the first read until the body is complete

        async def limited_receive() -> Message:
            nonlocal received, read
            if deadlines is None or (read is not None and read.done):
                message = await receive()  # e.g. waiting for a disconnect: never timed
            else:
                if read is None:
                    read = deadlines.start()
                try:
                    message = await read.receive(receive)
                except asyncio.CancelledError:
                    # Someone else's (ours is a 408): the app may read on, e.g. after Starlette's
                    # `is_disconnected()`, so the deadline stays; dropped once it has passed.
                    raise
                except BaseException:
                    read.finish()
                    raise
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    if read is not None:
                        read.finish()
                    raise ApiError(413, self._too_big)
                if message.get("more_body", False):
                    return message
            if read is not None:
                read.finish()
            return message

        return limited_receive


class LastResort:
    """Outermost: an exception nothing else handled still answers 500 in the JSON error shape.

    It stands in for Starlette's ServerErrorMiddleware (see GatewayApp) and also covers
    BaseExceptions (except our own cancellation). Once a response has started there is nothing
    to answer with, so the error is logged and goes on to the server.
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
            if is_our_cancellation(exc):
                raise
            logger.error(
                "unhandled %s on %s %s",
                describe(exc),
                scope.get("method"),
                scope.get("path"),
                exc_info=exc,
            )
            if started:
                raise
            await _send_error(send, 500, "internal_error", "internal error")


class GatewayApp(Starlette):
    """Starlette without its outermost ServerErrorMiddleware: LastResort answers every error
    that one would (and more), so it was one more wrapper of every `send` for nothing."""

    def build_middleware_stack(self) -> ASGIApp:
        handlers = {k: v for k, v in self.exception_handlers.items() if k not in (500, Exception)}
        app: ASGIApp = ExceptionMiddleware(self.router, handlers=handlers, debug=self.debug)
        for cls, args, kwargs in reversed(self.user_middleware):
            app = cls(app, *args, **kwargs)
        return app
