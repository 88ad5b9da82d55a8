"""Bad HTTP input always gets a JSON 4xx (`{"error", "detail"}`), never a 500."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest

from gateway.bus import Consumer
from gateway.messages import ActionTypes, QueueMessage
from tests.conftest import gateway_client
from tests.service_tokens import SERVICE_AUTH, with_remote

pytestmark = pytest.mark.anyio

# Remote services on, and every JSON request carries a service token, so that the internal
# endpoints parse (and refuse) the same malformed bodies as the others.
CFG: dict[str, Any] = with_remote(
    {
        "default_service": "echo",
        "services": {"echo": {"type": "workflow", "source": "examples.echo:workflow"}},
    }
)

JSON = {"content-type": "application/json", **SERVICE_AUTH}
RUN = "/services/echo/run"
TASKS = "/control_plane/tasks"


def assert_error(response: httpx.Response, status: int, code: str) -> Any:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    # `detail` is always one readable string; validation errors add the structured `errors`
    assert set(body) in ({"error", "detail"}, {"error", "detail", "errors"}), body
    assert isinstance(body["detail"], str) and body["detail"], body
    assert body["error"] == code
    if "errors" in body:
        first = body["errors"][0]
        assert ".".join(first["loc"]) in body["detail"] and first["msg"] in body["detail"]
        return body["errors"]
    return body["detail"]


@pytest.mark.parametrize("path", [RUN, TASKS, "/control_plane/services/register"])
@pytest.mark.parametrize(
    "raw",
    [b'{"kwargs": ', b"{'single': 'quotes'}", b"{,}", b"nul", b'{"a": 1} trailing'],
    ids=["truncated", "single-quotes", "comma", "bare-word", "trailing"],
)
async def test_malformed_json_is_400(path: str, raw: bytes) -> None:
    async with gateway_client(CFG) as client:
        detail = assert_error(
            await client.post(path, content=raw, headers=JSON), 400, "bad_request"
        )
    assert detail.startswith("malformed JSON:") and "line 1 column" in detail


async def test_wrong_types_are_422_with_loc() -> None:
    async with gateway_client(CFG) as client:
        detail = assert_error(
            await client.post(RUN, json={"kwargs": "not a dict"}), 422, "validation_error"
        )
        assert detail[0]["loc"] == ["body", "kwargs"] and detail[0]["msg"]
        detail = assert_error(
            await client.post(RUN, json={"kwargs": {}, "wait": "soon"}), 422, "validation_error"
        )
        assert detail[0]["loc"] == ["body", "wait"]
        detail = assert_error(
            await client.post(TASKS, json={"input": {}, "service": 12}), 422, "validation_error"
        )
        assert ["body", "service"] in [e["loc"] for e in detail]
        detail = assert_error(
            await client.get("/control_plane/tasks/x/result", params={"wait": "abc"}),
            422,
            "validation_error",
        )
        assert detail[0]["loc"] == ["query", "wait"]
        detail = assert_error(await client.post(RUN, json=[1, 2]), 422, "validation_error")
        assert detail[0]["loc"] == ["body"]
        detail = assert_error(
            await client.post(RUN, json={"input": "[1, 2]"}), 422, "validation_error"
        )
        assert "JSON object of run kwargs" in detail[0]["msg"]
        detail = assert_error(
            await client.post(RUN, json={"input": "{}", "kwargs": {}}), 422, "validation_error"
        )
        assert "either `kwargs` or `input`" in detail[0]["msg"]


@pytest.mark.parametrize("media", ["text/plain", "application/x-www-form-urlencoded", "text/json"])
async def test_wrong_content_type_is_415(media: str) -> None:
    async with gateway_client(CFG) as client:
        response = await client.post(
            RUN, content=b'{"kwargs": {}}', headers={"content-type": media}
        )
        assert media in assert_error(response, 415, "unsupported_media_type")


async def test_json_content_type_variants_are_accepted() -> None:
    async with gateway_client(CFG) as client:
        for media in ("application/json; charset=utf-8", "application/vnd.api+json", ""):
            headers = {"content-type": media} if media else {}
            response = await client.post(RUN, content=b'{"kwargs": {}}', headers=headers)
            assert response.status_code == 200, (media, response.text)


@pytest.mark.parametrize("raw", [b"", b"   \n\t"], ids=["empty", "whitespace"])
async def test_empty_body_is_400(raw: bytes) -> None:
    async with gateway_client(CFG) as client:
        detail = assert_error(await client.post(RUN, content=raw, headers=JSON), 400, "bad_request")
    assert "empty" in detail


async def test_duplicate_keys_are_400() -> None:
    async with gateway_client(CFG) as client:
        raw = b'{"kwargs": {"message": "a", "message": "b"}}'
        detail = assert_error(await client.post(RUN, content=raw, headers=JSON), 400, "bad_request")
    assert detail == "duplicate key 'message' in JSON body"


async def test_invalid_utf8_and_deep_nesting_are_400() -> None:
    async with gateway_client(CFG) as client:
        bad_bytes = await client.post(RUN, content=b'{"kwargs": "\xff\xfe"}', headers=JSON)
        assert "UTF-8" in assert_error(bad_bytes, 400, "bad_request")
        deep = b"[" * 50_000 + b"]" * 50_000
        nested = await client.post(RUN, content=deep, headers=JSON)
        assert "nested too deeply" in assert_error(nested, 400, "bad_request")


async def test_unknown_service_is_404() -> None:
    async with gateway_client(CFG) as client:
        detail = assert_error(
            await client.post(TASKS, json={"service": "ghost", "input": {}}), 404, "not_found"
        )
        assert detail == "no service named 'ghost'"
        assert_error(await client.post("/services/ghost/run", json={}), 404, "not_found")
        assert_error(await client.get("/control_plane/services/ghost"), 404, "not_found")


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/nothing/here"),
        ("GET", "/services/echo/nope"),
        ("POST", "/control_plane/nope"),
        ("GET", "/control_plane/tasks/a/b/c"),
    ],
)
async def test_unknown_route_is_404(method: str, path: str) -> None:
    async with gateway_client(CFG) as client:
        assert_error(await client.request(method, path), 404, "not_found")


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", RUN),
        ("DELETE", TASKS),
        ("PUT", "/control_plane/services"),
        ("POST", "/healthz"),
        ("GET", "/services/echo/process_message"),
    ],
)
async def test_wrong_method_is_405(method: str, path: str) -> None:
    async with gateway_client(CFG) as client:
        response = await client.request(method, path)
        assert_error(response, 405, "method_not_allowed")
        assert response.headers.get("allow")


async def test_full_bus_is_503_with_retry_after() -> None:
    apps: list[Any] = []
    config = with_remote({**CFG, "bus": {"buffer_size": 1, "publish_timeout": 0.1}})
    async with gateway_client(config, app_out=apps) as client:
        entered, release = anyio.Event(), anyio.Event()

        async def stuck(message: QueueMessage) -> None:
            entered.set()
            await release.wait()

        apps[0].state.runtime.bus.register_consumer(Consumer("sink", stuck))
        url = "/control_plane/process_message"
        body = QueueMessage(type="sink", action=ActionTypes.NEW_TOOL_CALL).model_dump_json()
        headers = {**JSON, **SERVICE_AUTH}
        assert (await client.post(url, content=body, headers=headers)).status_code == 200
        with anyio.fail_after(2):
            await entered.wait()  # message 1 is in the handler
        assert (await client.post(url, content=body, headers=headers)).status_code == 200
        full = await client.post(url, content=body, headers=headers)
        assert "is full" in assert_error(full, 503, "service_unavailable")
        assert int(full.headers["retry-after"]) >= 1
        release.set()


async def test_no_consumer_is_503_not_a_silent_drop() -> None:
    async with gateway_client(with_remote(CFG)) as client:
        body = QueueMessage(type="nobody-home", action=ActionTypes.NEW_TOOL_CALL).model_dump_json()
        response = await client.post(
            "/control_plane/process_message", content=body, headers={**JSON, **SERVICE_AUTH}
        )
        # an unknown destination is refused out loud (404 for the HTTP entry point)
        assert "no consumer" in assert_error(response, 404, "not_found")


GARBAGE = [
    b"null",
    b"0",
    b'"text"',
    b"[]",
    b"{}",
    b'{"input": null}',
    b'{"input": {"nested": [1, {"x": null}]}, "service": null}',
    b'{"kwargs": {"message": "\\u0000"}, "wait": 1e400}',
    b'{"task_id": "../../etc"}',
    b'{"service_name": "x", "host": 5}',
    b'{"type": 1, "action": "new_task", "data": []}',
]
POST_PATHS = [
    RUN,
    TASKS,
    "/control_plane/services/register",
    "/control_plane/services/deregister",
    "/control_plane/process_message",
    "/services/echo/process_message",
    "/control_plane/sessions/none/tasks",
]


async def test_garbage_never_gives_500() -> None:
    async with gateway_client(CFG) as client:
        for path in POST_PATHS:
            for raw in GARBAGE:
                response = await client.post(path, content=raw, headers=JSON)
                assert response.status_code < 500 or response.status_code == 503, (
                    path,
                    raw,
                    response.status_code,
                    response.text,
                )
                if response.status_code >= 400:
                    assert set(response.json()) <= {"error", "detail", "errors"}
                    assert isinstance(response.json()["detail"], str)
