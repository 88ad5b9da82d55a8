"""A small httpx client for the gateway's REST API (async, with a sync twin).

Errors come back as `GatewayError` carrying the status and the gateway's `{"error", "detail"}`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx


class GatewayError(Exception):
    def __init__(self, status: int, error: str, detail: Any) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail


def _check(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            body = response.json()
            error, detail = body.get("error", "error"), body.get("detail")
        except (ValueError, AttributeError):
            error, detail = "error", response.text
        raise GatewayError(response.status_code, error, detail)
    return response.json()


def _task_body(service: str | None, input: str | dict, session_id: str | None) -> dict:
    body: dict[str, Any] = {"input": input}
    if service:
        body["service"] = service
    if session_id:
        body["session_id"] = session_id
    return body


def _parse_sse(lines: list[str]) -> dict[str, Any] | None:
    for line in lines:
        if line.startswith("data:"):
            return json.loads(line[5:].strip())
    return None


class AsyncGatewayClient:
    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        token: str | None = None,
        timeout: float = 330.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=headers, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncGatewayClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def run(self, service: str, session_id: str | None = None, **kwargs: Any) -> dict:
        """Run a workflow or component with kwargs and wait for the end."""
        body: dict[str, Any] = {"kwargs": kwargs}
        if session_id:
            body["session_id"] = session_id
        return _check(await self._http.post(f"/services/{service}/run", json=body))

    async def submit(
        self, input: str | dict = "", service: str | None = None, session_id: str | None = None
    ) -> str:
        body = _task_body(service, input, session_id)
        return _check(await self._http.post("/control_plane/tasks", json=body))["task_id"]

    async def task(self, task_id: str) -> dict:
        return _check(await self._http.get(f"/control_plane/tasks/{task_id}"))

    async def result(self, task_id: str, wait: float = 30.0) -> dict:
        """Long-poll: the task record once it ended (or as it is after `wait` seconds)."""
        url = f"/control_plane/tasks/{task_id}/result"
        return _check(await self._http.get(url, params={"wait": wait}))

    async def cancel(self, task_id: str) -> dict:
        return _check(await self._http.post(f"/control_plane/tasks/{task_id}/cancel"))

    async def events(self, task_id: str) -> AsyncIterator[dict]:
        """The task's events as they happen, ending with its result."""
        url = f"/control_plane/tasks/{task_id}/events"
        async with self._http.stream("GET", url) as response:
            if response.status_code >= 400:
                await response.aread()
                _check(response)
            block: list[str] = []
            async for line in response.aiter_lines():
                if line:
                    block.append(line)
                    continue
                event = _parse_sse(block)
                block = []
                if event is not None:
                    yield event

    async def create_session(self) -> str:
        return _check(await self._http.post("/control_plane/sessions"))["session_id"]

    async def session_state(self, session_id: str) -> dict:
        return _check(await self._http.get(f"/control_plane/sessions/{session_id}/state"))

    async def services(self) -> dict:
        return _check(await self._http.get("/control_plane/services"))


class GatewayClient:
    """The same calls, blocking."""

    def __init__(
        self, base_url: str = "http://127.0.0.1:8000", token: str | None = None, timeout=330.0
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def run(self, service: str, session_id: str | None = None, **kwargs: Any) -> dict:
        body: dict[str, Any] = {"kwargs": kwargs}
        if session_id:
            body["session_id"] = session_id
        return _check(self._http.post(f"/services/{service}/run", json=body))

    def submit(
        self, input: str | dict = "", service: str | None = None, session_id: str | None = None
    ) -> str:
        body = _task_body(service, input, session_id)
        return _check(self._http.post("/control_plane/tasks", json=body))["task_id"]

    def task(self, task_id: str) -> dict:
        return _check(self._http.get(f"/control_plane/tasks/{task_id}"))

    def result(self, task_id: str, wait: float = 30.0) -> dict:
        url = f"/control_plane/tasks/{task_id}/result"
        return _check(self._http.get(url, params={"wait": wait}))

    def cancel(self, task_id: str) -> dict:
        return _check(self._http.post(f"/control_plane/tasks/{task_id}/cancel"))

    def events(self, task_id: str) -> Iterator[dict]:
        with self._http.stream("GET", f"/control_plane/tasks/{task_id}/events") as response:
            if response.status_code >= 400:
                response.read()
                _check(response)
            block: list[str] = []
            for line in response.iter_lines():
                if line:
                    block.append(line)
                    continue
                event = _parse_sse(block)
                block = []
                if event is not None:
                    yield event

    def create_session(self) -> str:
        return _check(self._http.post("/control_plane/sessions"))["session_id"]

    def session_state(self, session_id: str) -> dict:
        return _check(self._http.get(f"/control_plane/sessions/{session_id}/state"))

    def services(self) -> dict:
        return _check(self._http.get("/control_plane/services"))
