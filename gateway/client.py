"""The Python client of the gateway, blocking (`GatewayClient`) and async (`AsyncGatewayClient`).

    with GatewayClient() as gw:                      # $AGENT_GATEWAY_URL, $AGENT_GATEWAY_TOKEN
        gw.run("echo", message="hi")                  # -> "hi"
        task = gw.submit("assistant", "What is 2+3?")
        for event in task.events():                   # typed, resumes after a dropped connection
            print(event.kind, event.name)
        task.result(timeout=30)                       # raises TaskFailed with the task's error

The two classes make the same requests and decisions (those live in `gateway.client_wire`); only
the I/O differs. Errors are typed (`NotFound`, `Unauthorized`, `Overloaded`, `Unreachable`,
`TaskFailed`); a 503 is retried a bounded number of times, waiting as its Retry-After asks.
This module is over 400 lines because it holds both twins side by side, which keeps them alike.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote

import anyio
import httpx

from gateway.client_wire import (
    TERMINAL,
    Conflict,
    GatewayError,
    NotFound,
    Overloaded,
    SSEParser,
    StreamCursor,
    TaskCancelled,
    TaskEvent,
    TaskFailed,
    TaskTimedOut,
    Unauthorized,
    Unreachable,
    backoff,
    checked,
    error_for,
    result_value,
)

__all__ = [
    "AsyncGatewayClient",
    "AsyncTaskHandle",
    "Conflict",
    "GatewayClient",
    "GatewayError",
    "NotFound",
    "Overloaded",
    "TaskCancelled",
    "TaskEvent",
    "TaskFailed",
    "TaskHandle",
    "TaskTimedOut",
    "Unauthorized",
    "Unreachable",
]

DEFAULT_URL = "http://127.0.0.1:8000"
LONG_POLL = 300.0  # seconds per long-poll request while waiting for a task to end
KWARGS_TYPES = frozenset({"workflow", "component"})


def path(*segments: str) -> str:
    """A URL path from segments, each escaped (ids come from users)."""
    return "/" + "/".join(quote(str(s), safe="") for s in segments)


def _settings(base_url: str | None, token: str | None) -> tuple[str, dict[str, str]]:
    url = base_url or os.environ.get("AGENT_GATEWAY_URL") or DEFAULT_URL
    token = token if token is not None else os.environ.get("AGENT_GATEWAY_TOKEN")
    return url, ({"Authorization": f"Bearer {token}"} if token else {})


def _task_body(
    kind: str | None, input: Any, kwargs: dict[str, Any], session_id: str | None, service: str
) -> dict[str, Any]:
    """Text for agents and people; a kwargs object for workflows and components."""
    if isinstance(input, str) and kind not in KWARGS_TYPES and not kwargs:
        value: Any = input
    elif isinstance(input, str):
        value = {"input": input, **kwargs}
    else:
        value = {**(input or {}), **kwargs}
    body: dict[str, Any] = {"service": service, "input": value}
    if session_id:
        body["session_id"] = session_id
    return body


def _oldest(limit: int) -> dict[str, Any]:
    return {"limit": limit, "sort": "created_at", "order": "asc"}


def _stream_timeout(timeout: float) -> httpx.Timeout:
    return httpx.Timeout(timeout, read=None)  # a stream may be quiet while a person thinks


def _unreachable(url: Any, exc: httpx.TransportError) -> Unreachable:
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError):
        reason = "connection refused" if "refused" in reason.lower() else reason
    return Unreachable(str(url), reason)


# == async =======================================================================================
class AsyncGatewayClient:
    """Every call of the gateway's REST API, async (anyio: asyncio or trio)."""

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        max_retry_delay: float = 30.0,
        reconnects: int = 5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        url, headers = _settings(base_url, token)
        self.base_url = url
        self.timeout = timeout
        self.retries = retries
        self.max_retry_delay = max_retry_delay
        self.reconnects = reconnects
        self._http = httpx.AsyncClient(
            base_url=url, headers=headers, timeout=timeout, transport=transport
        )
        self._types: dict[str, str] = {}
        self.human = AsyncHuman(self)
        self.sessions = AsyncSessions(self)

    async def __aenter__(self) -> AsyncGatewayClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, url: str, **kwargs: Any) -> Any:
        """One call; a 503 is retried up to `retries` times, then raised as Overloaded."""
        for attempt in range(self.retries + 1):
            try:
                response = await self._http.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                raise _unreachable(self._http.base_url, exc) from None
            if response.status_code != 503 or attempt == self.retries:
                return checked(response)
            await anyio.sleep(backoff(attempt, response, self.max_retry_delay))
        raise AssertionError("unreachable")

    # -- services -------------------------------------------------------------------------------
    async def services(self) -> dict[str, dict[str, Any]]:
        """name -> definition (`type`, `prefix`, `description`, ...)."""
        found = await self.request("GET", "/control_plane/services")
        self._types.update({name: d.get("type", "") for name, d in found.items()})
        return found

    async def service(self, name: str) -> dict[str, Any]:
        found = await self.request("GET", path("control_plane", "services", name))
        self._types[name] = found.get("type", "")
        return found

    async def _kind(self, service: str) -> str:
        if service not in self._types:
            await self.service(service)
        return self._types[service]

    # -- tasks ----------------------------------------------------------------------------------
    async def submit(
        self, service: str, input: Any = None, *, session_id: str | None = None, **kwargs: Any
    ) -> AsyncTaskHandle:
        """Start a task. Workflows and components take kwargs; agents and people take text."""
        kind = await self._kind(service) if isinstance(input, str) else None
        body = _task_body(kind, input, kwargs, session_id, service)
        accepted = await self.request("POST", "/control_plane/tasks", json=body)
        return AsyncTaskHandle(self, accepted["task_id"], accepted.get("service", service))

    async def run(
        self,
        service: str,
        input: Any = None,
        *,
        session_id: str | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Any:
        """Submit and wait: the result, or TaskFailed / TaskCancelled / TaskTimedOut."""
        task = await self.submit(service, input, session_id=session_id, **kwargs)
        return await task.result(timeout)

    def task_handle(self, task_id: str) -> AsyncTaskHandle:
        """A handle on a task submitted earlier (by anyone)."""
        return AsyncTaskHandle(self, task_id)

    async def task(self, task_id: str) -> dict[str, Any]:
        return await self.request("GET", path("control_plane", "tasks", task_id))

    async def tasks(
        self,
        service: str | None = None,
        status: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> dict[str, Any]:
        """A page of tasks, newest first: `{"items": [...], "total": N}`."""
        params = {"limit": limit, "offset": offset, "service": service, "status": status}
        params = {k: v for k, v in params.items() if v is not None}
        return await self.request("GET", "/control_plane/tasks", params=params)

    async def tool(self, service: str, name: str, **kwargs: Any) -> dict[str, Any]:
        """Call one tool of a tool service: `{tool, output, raw_output, is_error}`."""
        found = await self.service(service)
        url = (found.get("prefix") or path("services", service)) + "/run"
        return await self.request("POST", url, json={"tool": name, "kwargs": kwargs})

    async def cancel(self, task_id: str) -> dict[str, Any]:
        return await self.request("POST", path("control_plane", "tasks", task_id, "cancel"))

    async def wait(self, task_id: str, timeout: float | None = None) -> dict[str, Any]:
        """The task's record once it ended; TimeoutError if it has not after `timeout` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        url = path("control_plane", "tasks", task_id, "result")
        while True:
            left = LONG_POLL if deadline is None else max(0.0, deadline - time.monotonic())
            wait = min(left, LONG_POLL)
            record = await self.request(
                "GET", url, params={"wait": wait}, timeout=wait + self.timeout
            )
            if record.get("status") in TERMINAL:
                return record
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"task {task_id} is still {record.get('status')}")

    async def events(
        self, task_id: str, after: int | str | None = None
    ) -> AsyncIterator[TaskEvent]:
        """The task's events from the start (or after id `after`) to its result event."""
        url = path("control_plane", "tasks", task_id, "events")
        async for event in self.stream(url, StreamCursor(after), until_result=True):
            yield event

    async def stream(
        self, url: str, cursor: StreamCursor, until_result: bool = False
    ) -> AsyncIterator[TaskEvent]:
        """Events of an SSE endpoint; a dropped connection resumes after the last event seen."""
        failures = 0
        while True:
            progressed, asked = False, 0.0
            try:
                async with self._http.stream(
                    "GET", url, headers=cursor.headers(), timeout=_stream_timeout(self.timeout)
                ) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        error = error_for(response)
                        if not isinstance(error, Overloaded) or failures >= self.retries:
                            raise error
                        asked = error.retry_after or 0.0
                    else:
                        parser = SSEParser()
                        async for line in response.aiter_lines():
                            event = parser.line(line)
                            if event is not None and cursor.admit(event):
                                progressed = True
                                yield event
                                if until_result and cursor.finished:
                                    return
            except httpx.TransportError as exc:
                if failures >= self.reconnects:
                    raise _unreachable(self._http.base_url, exc) from None
            failures = 0 if progressed else failures + 1
            if failures > self.reconnects:
                raise Unreachable(str(self._http.base_url), f"the stream at {url} keeps ending")
            cursor.reconnecting()
            delay = backoff(max(0, failures - 1), None, self.max_retry_delay)
            await anyio.sleep(min(self.max_retry_delay, max(delay, asked)))


class AsyncTaskHandle:
    """One submitted task: wait for its result, follow its events, cancel it."""

    def __init__(self, client: AsyncGatewayClient, task_id: str, service: str | None = None):
        self.client = client
        self.task_id = task_id
        self.service = service

    def __repr__(self) -> str:
        return f"<task {self.task_id} of {self.service or '?'}>"

    async def result(self, timeout: float | None = None) -> Any:
        return result_value(await self.client.wait(self.task_id, timeout))

    async def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """The final record (any ending, no raise for failure); TimeoutError if not ended."""
        return await self.client.wait(self.task_id, timeout)

    async def status(self) -> dict[str, Any]:
        return await self.client.task(self.task_id)

    def events(self, after: int | str | None = None) -> AsyncIterator[TaskEvent]:
        return self.client.events(self.task_id, after)

    async def cancel(self) -> dict[str, Any]:
        return await self.client.cancel(self.task_id)


class AsyncHuman:
    """Questions waiting for people, across every human service."""

    def __init__(self, client: AsyncGatewayClient) -> None:
        self.client = client

    async def _prefixes(self, service: str | None) -> dict[str, str]:
        if service is not None:
            found = {service: await self.client.service(service)}
        else:
            found = await self.client.services()
        return {
            name: d.get("prefix") or path("services", name)
            for name, d in found.items()
            if d.get("type") == "human"
        }

    async def pending(self, service: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Waiting human tasks, oldest first, each with its `service`."""
        waiting: list[dict[str, Any]] = []
        for name, prefix in (await self._prefixes(service)).items():
            page = await self.client.request("GET", f"{prefix}/tasks", params=_oldest(limit))
            items = page.get("items", []) if isinstance(page, dict) else page
            waiting += [{**item, "service": name} for item in items]
        return sorted(waiting, key=lambda t: t.get("created_at") or 0)

    async def answer(self, task_id: str, text: str, service: str | None = None) -> dict[str, Any]:
        """Answer a waiting question (NotFound if none waits, Conflict if already answered)."""
        body = {"result": text}
        prefixes = await self._prefixes(service)
        for prefix in prefixes.values():
            try:
                await self.client.request("GET", f"{prefix}/tasks/{quote(task_id, safe='')}")
            except NotFound:
                continue
            url = f"{prefix}/tasks/{quote(task_id, safe='')}/handle"
            return await self.client.request("POST", url, json=body)
        where = f"human service {service!r}" if service else "any human service"
        raise NotFound(404, "not_found", f"no question {task_id!r} in {where}")


class AsyncSessions:
    def __init__(self, client: AsyncGatewayClient) -> None:
        self.client = client

    async def create(self) -> str:
        return (await self.client.request("POST", "/control_plane/sessions"))["session_id"]

    async def list(self, limit: int = 100) -> Any:
        return await self.client.request("GET", "/control_plane/sessions", params={"limit": limit})

    async def get(self, session_id: str) -> dict[str, Any]:
        return await self.client.request("GET", path("control_plane", "sessions", session_id))

    async def delete(self, session_id: str) -> dict[str, Any]:
        return await self.client.request("DELETE", path("control_plane", "sessions", session_id))

    async def state(self, session_id: str) -> dict[str, Any]:
        url = path("control_plane", "sessions", session_id, "state")
        return await self.client.request("GET", url)


# == blocking ====================================================================================
class GatewayClient:
    """The same calls as AsyncGatewayClient, blocking."""

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        max_retry_delay: float = 30.0,
        reconnects: int = 5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        url, headers = _settings(base_url, token)
        self.base_url = url
        self.timeout = timeout
        self.retries = retries
        self.max_retry_delay = max_retry_delay
        self.reconnects = reconnects
        self._http = httpx.Client(
            base_url=url, headers=headers, timeout=timeout, transport=transport
        )
        self._types: dict[str, str] = {}
        self.human = Human(self)
        self.sessions = Sessions(self)

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                raise _unreachable(self._http.base_url, exc) from None
            if response.status_code != 503 or attempt == self.retries:
                return checked(response)
            time.sleep(backoff(attempt, response, self.max_retry_delay))
        raise AssertionError("unreachable")

    def services(self) -> dict[str, dict[str, Any]]:
        found = self.request("GET", "/control_plane/services")
        self._types.update({name: d.get("type", "") for name, d in found.items()})
        return found

    def service(self, name: str) -> dict[str, Any]:
        found = self.request("GET", path("control_plane", "services", name))
        self._types[name] = found.get("type", "")
        return found

    def _kind(self, service: str) -> str:
        if service not in self._types:
            self.service(service)
        return self._types[service]

    def submit(
        self, service: str, input: Any = None, *, session_id: str | None = None, **kwargs: Any
    ) -> TaskHandle:
        kind = self._kind(service) if isinstance(input, str) else None
        body = _task_body(kind, input, kwargs, session_id, service)
        accepted = self.request("POST", "/control_plane/tasks", json=body)
        return TaskHandle(self, accepted["task_id"], accepted.get("service", service))

    def run(
        self,
        service: str,
        input: Any = None,
        *,
        session_id: str | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Any:
        return self.submit(service, input, session_id=session_id, **kwargs).result(timeout)

    def task_handle(self, task_id: str) -> TaskHandle:
        return TaskHandle(self, task_id)

    def task(self, task_id: str) -> dict[str, Any]:
        return self.request("GET", path("control_plane", "tasks", task_id))

    def tasks(
        self,
        service: str | None = None,
        status: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> dict[str, Any]:
        params = {"limit": limit, "offset": offset, "service": service, "status": status}
        params = {k: v for k, v in params.items() if v is not None}
        return self.request("GET", "/control_plane/tasks", params=params)

    def tool(self, service: str, name: str, **kwargs: Any) -> dict[str, Any]:
        """Call one tool of a tool service: `{tool, output, raw_output, is_error}`."""
        found = self.service(service)
        url = (found.get("prefix") or path("services", service)) + "/run"
        return self.request("POST", url, json={"tool": name, "kwargs": kwargs})

    def cancel(self, task_id: str) -> dict[str, Any]:
        return self.request("POST", path("control_plane", "tasks", task_id, "cancel"))

    def wait(self, task_id: str, timeout: float | None = None) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        url = path("control_plane", "tasks", task_id, "result")
        while True:
            left = LONG_POLL if deadline is None else max(0.0, deadline - time.monotonic())
            wait = min(left, LONG_POLL)
            record = self.request("GET", url, params={"wait": wait}, timeout=wait + self.timeout)
            if record.get("status") in TERMINAL:
                return record
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"task {task_id} is still {record.get('status')}")

    def events(self, task_id: str, after: int | str | None = None) -> Iterator[TaskEvent]:
        url = path("control_plane", "tasks", task_id, "events")
        yield from self.stream(url, StreamCursor(after), until_result=True)

    def stream(
        self, url: str, cursor: StreamCursor, until_result: bool = False
    ) -> Iterator[TaskEvent]:
        failures = 0
        while True:
            progressed, asked = False, 0.0
            try:
                with self._http.stream(
                    "GET", url, headers=cursor.headers(), timeout=_stream_timeout(self.timeout)
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        error = error_for(response)
                        if not isinstance(error, Overloaded) or failures >= self.retries:
                            raise error
                        asked = error.retry_after or 0.0
                    else:
                        parser = SSEParser()
                        for line in response.iter_lines():
                            event = parser.line(line)
                            if event is not None and cursor.admit(event):
                                progressed = True
                                yield event
                                if until_result and cursor.finished:
                                    return
            except httpx.TransportError as exc:
                if failures >= self.reconnects:
                    raise _unreachable(self._http.base_url, exc) from None
            failures = 0 if progressed else failures + 1
            if failures > self.reconnects:
                raise Unreachable(str(self._http.base_url), f"the stream at {url} keeps ending")
            cursor.reconnecting()
            delay = backoff(max(0, failures - 1), None, self.max_retry_delay)
            time.sleep(min(self.max_retry_delay, max(delay, asked)))


class TaskHandle:
    """One submitted task: wait for its result, follow its events, cancel it."""

    def __init__(self, client: GatewayClient, task_id: str, service: str | None = None):
        self.client = client
        self.task_id = task_id
        self.service = service

    def __repr__(self) -> str:
        return f"<task {self.task_id} of {self.service or '?'}>"

    def result(self, timeout: float | None = None) -> Any:
        return result_value(self.client.wait(self.task_id, timeout))

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        return self.client.wait(self.task_id, timeout)

    def status(self) -> dict[str, Any]:
        return self.client.task(self.task_id)

    def events(self, after: int | str | None = None) -> Iterator[TaskEvent]:
        return self.client.events(self.task_id, after)

    def cancel(self) -> dict[str, Any]:
        return self.client.cancel(self.task_id)


class Human:
    def __init__(self, client: GatewayClient) -> None:
        self.client = client

    def _prefixes(self, service: str | None) -> dict[str, str]:
        found = {service: self.client.service(service)} if service else self.client.services()
        return {
            name: d.get("prefix") or path("services", name)
            for name, d in found.items()
            if d.get("type") == "human"
        }

    def pending(self, service: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        waiting: list[dict[str, Any]] = []
        for name, prefix in self._prefixes(service).items():
            page = self.client.request("GET", f"{prefix}/tasks", params=_oldest(limit))
            items = page.get("items", []) if isinstance(page, dict) else page
            waiting += [{**item, "service": name} for item in items]
        return sorted(waiting, key=lambda t: t.get("created_at") or 0)

    def answer(self, task_id: str, text: str, service: str | None = None) -> dict[str, Any]:
        for prefix in self._prefixes(service).values():
            try:
                self.client.request("GET", f"{prefix}/tasks/{quote(task_id, safe='')}")
            except NotFound:
                continue
            url = f"{prefix}/tasks/{quote(task_id, safe='')}/handle"
            return self.client.request("POST", url, json={"result": text})
        where = f"human service {service!r}" if service else "any human service"
        raise NotFound(404, "not_found", f"no question {task_id!r} in {where}")


class Sessions:
    def __init__(self, client: GatewayClient) -> None:
        self.client = client

    def create(self) -> str:
        return self.client.request("POST", "/control_plane/sessions")["session_id"]

    def list(self, limit: int = 100) -> Any:
        return self.client.request("GET", "/control_plane/sessions", params={"limit": limit})

    def get(self, session_id: str) -> dict[str, Any]:
        return self.client.request("GET", path("control_plane", "sessions", session_id))

    def delete(self, session_id: str) -> dict[str, Any]:
        return self.client.request("DELETE", path("control_plane", "sessions", session_id))

    def state(self, session_id: str) -> dict[str, Any]:
        return self.client.request("GET", path("control_plane", "sessions", session_id, "state"))
