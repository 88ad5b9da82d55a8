"""`decode_json` (one prebuilt decoder, a C-speed duplicate check) answers exactly as the
plain `json.loads` with the same hooks did: the same value or the same 400 detail; `read_body`
reads as `Request.body()` did and `query_dict` as `dict(request.query_params)`."""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.datastructures import QueryParams
from starlette.requests import ClientDisconnect, Request

from gateway.web.errors import ApiError
from gateway.web.routing import (
    _finite_float,
    _reject_constant,
    decode_json,
    query_dict,
    read_body,
)


def _reference(raw: bytes) -> Any:
    """The implementation `decode_json` replaced (per-call `json.loads`, a Python key loop)."""

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                raise ApiError(400, f"duplicate key {key!r} in JSON body")
            seen[key] = value
        return seen

    try:
        return json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=pairs_hook,
            parse_constant=_reject_constant,  # unchanged by decode_json: shared
            parse_float=_finite_float,
        )
    except json.JSONDecodeError as exc:
        raise ApiError(
            400, f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except ValueError as exc:
        raise ApiError(400, f"malformed JSON: {exc}") from None


CASES = [
    b'{"kwargs": {"message": "ping"}}',
    b'{"a": 1, "b": [1, 2.5, -0.0, 1e10, true, false, null], "c": {"d": {}}}',
    b'{"a": 1, "a": 2}',
    b'{"a": {"x": 1, "y": 2, "x": 3}, "b": 1}',
    b'{"a": 1, "b": 2, "b": 3, "a": 4}',
    b'[{"k": 1}, {"k": 1, "k": 1}]',
    b'{"n": NaN}',
    b'{"n": -Infinity}',
    b'{"n": 1e999}',
    b'{"n": -1e400}',
    b'{"n": 1' + b"0" * 5000 + b"}",
    "\ufeff{}".encode(),
    b'{"s": "\\ud83d\\ude00", "t": "caf\\u00e9"}',
    b'{"kwargs": ',
    b"{'single': 'quotes'}",
    b"{,}",
    b'{"a": 1} trailing',
    b'"just a string"',
    b"12",
    b'  \n {"spaced": [ ] }  ',
]


@pytest.mark.parametrize("raw", CASES)
def test_decode_json_matches_the_reference(raw: bytes) -> None:
    try:
        expected: Any = ("value", _reference(raw))
    except ApiError as exc:
        expected = ("error", exc.status, exc.detail)
    try:
        got: Any = ("value", decode_json(raw))
    except ApiError as exc:
        got = ("error", exc.status, exc.detail)
    assert got == expected
    if got[0] == "value":  # and keys keep their order
        assert json.dumps(got[1]) == json.dumps(expected[1])


def test_the_shared_decoder_is_clean_after_a_refused_body() -> None:
    with pytest.raises(ApiError, match="duplicate key 'k'"):
        decode_json(b'{"k": 1, "k": 2}')
    assert decode_json(b'{"k": 1}') == {"k": 1}


def _request(*messages: dict[str, Any]) -> Request:
    pending = list(messages)

    async def receive() -> dict[str, Any]:
        return pending.pop(0)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [], "query_string": b""}
    return Request(scope, receive)


@pytest.mark.anyio
async def test_read_body_joins_chunks_and_leaves_them_for_request_body() -> None:
    request = _request(
        {"type": "http.request", "body": b'{"a": ', "more_body": True},
        {"type": "http.request", "body": b"", "more_body": True},
        {"type": "http.request", "body": b"1}"},
    )
    assert await read_body(request) == b'{"a": 1}'
    assert await request.body() == b'{"a": 1}'  # no second read off `receive`


@pytest.mark.anyio
async def test_read_body_raises_client_disconnect_as_starlette_does() -> None:
    request = _request(
        {"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.disconnect"}
    )
    with pytest.raises(ClientDisconnect):
        await read_body(request)


@pytest.mark.parametrize(
    "raw",
    [
        b"wait=30",
        b"stream=true&after=3",
        b"a=1&a=2&b=&c",
        b"x=%E2%9C%93&y=a+b&z=%ZZ",
        b"&&=v&k==",
        "n=\xe9".encode("latin-1"),
        b"after=1;after=2",
    ],
)
def test_query_dict_is_dict_of_starlette_query_params(raw: bytes) -> None:
    assert query_dict(raw) == dict(QueryParams(raw))
    assert list(query_dict(raw)) == list(dict(QueryParams(raw)))
