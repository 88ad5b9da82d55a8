"""Hand-written nasty inputs: every one gets a 4xx in the one error shape, never a 500.

Huge bodies (by Content-Length and streamed), deep nesting, wrong content types, invalid UTF-8,
non-JSON numbers, path traversal, unicode names, wrong types and duplicate keys.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from gateway.app import build_app
from gateway.config import ConfigError, parse_config
from tests.conftest import gateway_client, running_server
from tests.fixtures_faults import assert_error, demo_services, wait_ended
from tests.service_tokens import SERVICE_AUTH, with_remote

pytestmark = pytest.mark.anyio

LIMIT = 1024
CONFIG: dict[str, Any] = {
    "default_service": "echo",
    "max_body_bytes": LIMIT,
    "services": {
        "echo": {"type": "workflow", "source": "examples.echo:workflow"},
        "counter": {"type": "workflow", "source": "examples.counter:workflow"},
    },
}
CONFIG = with_remote(CONFIG)  # the internal endpoints take the same nasty bodies
BIG_CONFIG = {**CONFIG, "max_body_bytes": 1_048_576}


@pytest.fixture(autouse=True)
def no_unhandled_errors(caplog):
    """Whatever a test sends, the catch-all 500 handler must never have run."""
    caplog.set_level(logging.ERROR, logger="gateway.app")
    yield
    unhandled = [r for r in caplog.records if r.name == "gateway.app"]
    assert not unhandled, [r.getMessage() for r in unhandled]


async def new_session(client) -> str:
    response = await client.post("/control_plane/sessions")
    assert response.status_code == 201
    return response.json()["session_id"]


def body_routes(session_id: str) -> list[str]:
    """Routes that read a JSON body."""
    return [
        "/control_plane/tasks",
        "/services/echo/run",
        "/services/echo/process_message",
        "/control_plane/process_message",
        f"/control_plane/sessions/{session_id}/state",
        f"/control_plane/sessions/{session_id}/tasks",
        "/control_plane/services/register",
    ]


async def raw_asgi(app, method: str, raw_path: str) -> tuple[int, dict[str, str], bytes]:
    """One request straight into the ASGI app, with the path exactly as given (no clean-up)."""
    path, _, query = raw_path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("latin-1", "replace"),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"gateway")],
        "client": ("127.0.0.1", 1),
        "server": ("gateway", 80),
    }
    sent: list[dict] = []
    requested = False

    async def receive() -> dict:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], headers, body


# -- huge bodies ---------------------------------------------------------------------------------
async def test_a_body_over_the_limit_is_refused_by_content_length() -> None:
    async with gateway_client(CONFIG) as client:
        client.headers.update(SERVICE_AUTH)
        session_id = await new_session(client)
        huge = json.dumps({"input": "x" * (LIMIT * 4)}).encode()
        for path in body_routes(session_id):
            response = await client.post(path, content=huge)
            body = assert_error(response, 413)
            assert body["error"] == "payload_too_large"
            assert str(LIMIT) in body["detail"]
        # A body of exactly the limit is fine.
        exact = json.dumps({"input": ""}).encode()
        exact = exact[:-1] + b" " * (LIMIT - len(exact)) + b"}"
        assert len(exact) == LIMIT
        assert (await client.post("/control_plane/tasks", content=exact)).status_code == 202


async def chunks(total: int, size: int = 256) -> AsyncIterator[bytes]:
    yield b'{"input": "'
    for _ in range(total // size):
        yield b"y" * size
    yield b'"}'


async def test_a_body_over_the_limit_is_refused_while_streaming_in() -> None:
    async with gateway_client(CONFIG) as client:
        client.headers.update(SERVICE_AUTH)
        session_id = await new_session(client)
        for path in body_routes(session_id):
            request = client.build_request("POST", path, content=chunks(LIMIT * 8))
            assert "content-length" not in request.headers
            assert request.headers["transfer-encoding"] == "chunked"
            body = assert_error(await client.send(request), 413)
            assert body["error"] == "payload_too_large"
        # A small streamed body is read and accepted.
        request = client.build_request("POST", "/control_plane/tasks", content=chunks(256))
        assert (await client.send(request)).status_code == 202


def test_huge_bodies_against_the_real_server(tmp_path) -> None:
    with running_server(CONFIG, tmp_path) as server, httpx.Client(base_url=server.base_url) as c:
        huge = json.dumps({"input": "x" * (LIMIT * 4)}).encode()
        assert_error(c.post("/control_plane/tasks", content=huge), 413)

        def stream():
            yield b'{"input": "'
            for _ in range(16):
                yield b"z" * 256
            yield b'"}'

        response = c.post("/control_plane/tasks", content=stream())
        assert_error(response, 413)
        assert c.get("/healthz").status_code == 200
        ok = c.post("/services/echo/run", json={"kwargs": {"message": "fine"}})
        assert ok.json()["result"] == "fine"
    assert "Traceback" not in server.log()


# -- nesting ---------------------------------------------------------------------------------------
def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


async def test_deep_nesting_is_a_400_never_a_500() -> None:
    async with gateway_client(BIG_CONFIG) as client:
        client.headers.update(SERVICE_AUTH)
        session_id = await new_session(client)
        bodies = {
            "/control_plane/tasks": '{"service": "counter", "input": {"message": %s}}',
            "/services/counter/run": '{"kwargs": {"message": %s}}',
            f"/control_plane/sessions/{session_id}/state": '{"state": {"m": %s}}',
            "/control_plane/process_message": (
                '{"type": "echo", "action": "new_tool_call", "data": {"m": %s}}'
            ),
        }
        for depth in (200, 1000, 100_000):
            for path, template in bodies.items():
                response = await client.post(path, content=template % nested(depth))
                body = assert_error(response, 400)
                assert "nested" in body["detail"], body
        # Reasonable nesting is accepted, and reading it back works.
        for path, template in bodies.items():
            response = await client.post(path, content=template % nested(60))
            assert response.status_code in (200, 202), (path, response.text)
        state = await client.get(f"/control_plane/sessions/{session_id}/state")
        assert state.status_code == 200
        assert (await client.get(f"/control_plane/sessions/{session_id}")).status_code == 200


async def test_a_result_too_deep_to_report_fails_the_task_instead_of_hanging() -> None:
    # The body is flat (the nesting hides in a JSON string), so only the result is too deep.
    async with gateway_client(BIG_CONFIG) as client:
        client.headers.update(SERVICE_AUTH)
        inner = json.dumps({"message": json.loads(nested(300, ""))})
        response = await client.post(
            "/control_plane/tasks", json={"service": "counter", "input": inner}
        )
        assert response.status_code == 202
        record = await wait_ended(client, response.json()["task_id"], timeout=5)
        assert record["status"] == "failed"
        assert "could not be reported" in record["error"]
        assert (await client.get("/control_plane/tasks")).status_code == 200


# -- content types and encodings -----------------------------------------------------------------
async def test_a_wrong_content_type_is_415() -> None:
    async with gateway_client(CONFIG) as client:
        client.headers.update(SERVICE_AUTH)
        session_id = await new_session(client)
        for content_type in (
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/xml",
            "application/jsonp",
        ):
            for path in body_routes(session_id):
                response = await client.post(
                    path, content=b'{"input": "x"}', headers={"content-type": content_type}
                )
                body = assert_error(response, 415)
                assert content_type.split(";")[0] in body["detail"]
        for content_type in ("application/json; charset=utf-8", "application/merge-patch+json"):
            response = await client.post(
                "/control_plane/tasks",
                content=b'{"input": "x"}',
                headers={"content-type": content_type},
            )
            assert response.status_code == 202, (content_type, response.text)


async def test_invalid_utf8_and_non_json_values_are_400() -> None:
    async with gateway_client(BIG_CONFIG) as client:
        client.headers.update(SERVICE_AUTH)
        session_id = await new_session(client)
        payloads = {
            b'{"input": "\xff\xfe"}': "UTF-8",
            b'{"input": "\xc0\xaf"}': "UTF-8",  # overlong encoding of "/"
            b'{"input": "\xe2\x82"}': "UTF-8",  # truncated sequence
            b'{"input": "\xed\xa0\x80"}': "UTF-8",  # an encoded surrogate
            b'{"input": "\\ud800"}': "surrogate",  # a lone surrogate escape
            b'{"state": {"x": NaN}}': "NaN",
            b'{"state": {"x": -Infinity}}': "Infinity",
            b'{"state": {"x": 1e999}}': "out of range",
            b'{"state": {"x": ' + b"9" * 5000 + b"}}": "malformed",
            b'{"input": "unterminated': "malformed",
            b"\xef\xbb\xbf{}": "malformed",  # a UTF-8 byte order mark
            b"   ": "empty",
        }
        for path in (
            "/control_plane/tasks",
            "/services/echo/run",
            f"/control_plane/sessions/{session_id}/state",
        ):
            for payload, hint in payloads.items():
                response = await client.post(path, content=payload)
                body = assert_error(response, 400)
                assert hint.lower() in body["detail"].lower(), (payload[:30], body)
        # A valid surrogate pair (one emoji) is fine and round-trips.
        response = await client.post(
            "/services/echo/run", content=b'{"kwargs": {"message": "ok \\ud83d\\udca5"}}'
        )
        assert response.json()["result"] == "ok \U0001f4a5"


# -- ids and names -------------------------------------------------------------------------------
TRAVERSALS = [
    "..%2F..%2Fetc%2Fpasswd",
    "..%2f..%2f..%2f..%2fetc%2fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "..%5C..%5Cwindows%5Cwin.ini",
    "%00",
    "'%3B%20DROP%20TABLE%20tasks%3B--",
]


async def test_path_traversal_in_ids_finds_nothing(tmp_path) -> None:
    cfg = {**CONFIG, "store": {"kind": "sqlite", "path": str(tmp_path / "nasty.db")}}
    apps: list = []
    async with gateway_client(cfg, app_out=apps) as client:
        for bad in TRAVERSALS:
            for path in (
                f"/control_plane/tasks/{bad}",
                f"/control_plane/tasks/{bad}/result",
                f"/control_plane/sessions/{bad}",
                f"/control_plane/sessions/{bad}/state",
                f"/control_plane/services/{bad}",
                f"/docs/assets/{bad}",
            ):
                response = await client.get(path)
                assert_error(response, 404)
                assert "root:" not in response.text
            assert_error(await client.post(f"/control_plane/tasks/{bad}/cancel"), 404)
        # Raw `../` segments, exactly as sent (httpx would normalise them away).
        app = apps[0]
        for raw in (
            "/control_plane/tasks/../../etc/passwd",
            "/control_plane/tasks/..%2F..%2Fetc%2Fpasswd",
            "/docs/assets/../../../../etc/passwd",
            "/docs/assets/..%2F..%2F..%2Fetc%2Fpasswd",
            "/docs/assets/%2e%2e/%2e%2e/pyproject.toml",
            "/services/echo/../../etc/passwd",
        ):
            status, headers, body = await raw_asgi(app, "GET", raw)
            assert status == 404, (raw, status, body[:200])
            assert headers["content-type"].startswith("application/json"), raw
            assert set(json.loads(body)) == {"error", "detail"}
            assert b"root:" not in body and b"[project]" not in body
        # A task id in a body is held to the id pattern.
        for bad in ("../../etc/passwd", "a/b", "x" * 200, ""):
            response = await client.post("/control_plane/tasks", json={"task_id": bad})
            assert_error(response, 422)
        # The store is unharmed: a task is still written and read back by id.
        response = await client.post("/control_plane/tasks", json={"input": {"message": "ok"}})
        record = await wait_ended(client, response.json()["task_id"])
        assert record["status"] == "completed"


async def test_unicode_service_names_are_404_or_422_and_unicode_data_round_trips() -> None:
    names = ["ëcho", "\U0001f4a5", "echo\u202e", "echo\u0000", "ＥＣＨＯ", "e\u0301cho"]
    async with gateway_client(CONFIG) as client:
        client.headers.update(SERVICE_AUTH)
        for name in names:
            response = await client.post(
                "/control_plane/tasks", json={"service": name, "input": {}}
            )
            body = assert_error(response, 404)
            assert "no service named" in body["detail"]
            quoted = quote(name, safe="")
            assert_error(await client.get(f"/control_plane/services/{quoted}"), 404)
            assert_error(await client.post(f"/services/{quoted}/run", json={"kwargs": {}}), 404)
        assert_error(await client.post("/control_plane/tasks", json={"service": "é" * 129}), 422)
        text = "héllo \U0001f4a5 \u202eevil\u202c \u4e2d\u6587 \u0000 end"
        response = await client.post("/services/echo/run", json={"kwargs": {"message": text}})
        assert response.json()["result"] == text
    with pytest.raises(ConfigError, match="service name"):
        build_app(parse_config({"services": {"ëcho": {"type": "workflow", "source": "x:y"}}}))


# -- types and keys --------------------------------------------------------------------------------
async def test_wrong_types_are_422_with_the_location() -> None:
    async with gateway_client(CONFIG) as client:
        client.headers.update(SERVICE_AUTH)
        session_id = await new_session(client)
        cases = [
            ("/control_plane/tasks", {"input": 42}, ["body", "input"]),
            ("/control_plane/tasks", {"service": 5}, ["body", "service"]),
            ("/control_plane/tasks", {"session_id": 7}, ["body", "session_id"]),
            ("/control_plane/tasks", {"task_id": 12}, ["body", "task_id"]),
            ("/services/echo/run", {"kwargs": 5}, ["body", "kwargs"]),
            ("/services/echo/run", {"input": 5}, ["body", "input"]),
            ("/services/echo/run", {"wait": "soon"}, ["body", "wait"]),
            ("/services/echo/run", {"session_id": ["a"]}, ["body", "session_id"]),
            (f"/control_plane/sessions/{session_id}/state", {"state": "x"}, ["body", "state"]),
            (f"/control_plane/sessions/{session_id}/tasks", {"input": 1.5}, ["body", "input"]),
            ("/control_plane/services/register", {"service_name": 5}, ["body", "service_name"]),
            ("/control_plane/process_message", {"type": 5}, ["body", "type"]),
            ("/control_plane/tasks/x/events", {"event": 5}, ["body", "event"]),
        ]
        for path, payload, loc in cases:
            body = assert_error(await client.post(path, json=payload), 422)
            locs = [error["loc"] for error in body["errors"]]
            assert any(found[: len(loc)] == loc for found in locs), (path, payload, locs)
            assert all({"loc", "msg", "type"} <= set(error) for error in body["errors"])
            assert isinstance(body["detail"], str)
        for not_an_object in ([], "text", 3, None, True):
            payload = json.dumps(not_an_object)
            body = assert_error(await client.post("/control_plane/tasks", content=payload), 422)
            assert body["errors"][0]["loc"] == ["body"]
        for query, loc in (
            ("limit=ten", ["query", "limit"]),
            ("offset=-1", ["query", "offset"]),
            ("status=exploded", ["query", "status"]),
        ):
            body = assert_error(await client.get(f"/control_plane/tasks?{query}"), 422)
            assert body["errors"][0]["loc"] == loc
        body = assert_error(await client.get("/control_plane/tasks/x/result?wait=forever"), 422)
        assert body["errors"][0]["loc"] == ["query", "wait"]


async def test_duplicate_keys_are_400() -> None:
    async with gateway_client(CONFIG) as client:
        client.headers.update(SERVICE_AUTH)
        session_id = await new_session(client)
        for path, payload in (
            ("/control_plane/tasks", b'{"input": "a", "input": "b"}'),
            ("/control_plane/tasks", b'{"input": {"x": 1, "y": {"z": 1, "z": 2}}}'),
            ("/services/echo/run", b'{"kwargs": {"message": "a", "message": "b"}}'),
            (f"/control_plane/sessions/{session_id}/state", b'{"state": {"k": 1, "k": 1}}'),
        ):
            body = assert_error(await client.post(path, content=payload), 400)
            assert "duplicate key" in body["detail"]


async def test_unknown_routes_and_methods_use_the_error_shape() -> None:
    async with gateway_client(CONFIG) as client:
        client.headers.update(SERVICE_AUTH)
        assert_error(await client.get("/no/such/route"), 404)
        assert_error(await client.get("/services/nope/run"), 404)
        assert_error(await client.delete("/control_plane/tasks"), 405)
        assert_error(await client.get("/services/echo/run"), 405)
        assert_error(await client.put("/healthz"), 405)
        assert_error(await client.post("/control_plane/tasks", content=b""), 400)


async def test_nasty_json_inside_input_strings_is_a_4xx_or_a_failed_task() -> None:
    # The body is flat JSON; the nesting or the huge number hides in the `input` string that a
    # service decodes itself (workflow and component run kwargs, tool calls).
    services = demo_services()
    deep, big = nested(5000, ""), "9" * 5000
    texts = [
        deep,
        big,
        '{"message": ' + big + "}",
        '{"tool": "add", "kwargs": {"a": ' + deep + "}}",
    ]
    runs = [f"/services/{name}/run" for name in services if name in ("echo", "wordstats")]
    runs += [f"/services/{name}/run" for name, e in services.items() if e["type"] == "tool"]
    async with gateway_client({"default_service": "echo", "services": services}) as client:
        for text in texts:
            for path in runs:
                response = await client.post(path, json={"input": text, "wait": 5})
                assert_error(response, 422 if response.status_code == 422 else 400)
            response = await client.post("/control_plane/tasks", json={"input": text})
            record = await wait_ended(client, response.json()["task_id"])
            assert record["status"] == "failed"
            assert "JSON" in record["error"]
