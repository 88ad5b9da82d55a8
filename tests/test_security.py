"""Security: bearer-token auth on every route but /healthz, constant-time token checks, tokens
only from the environment, CORS closed unless configured, and a loopback default bind.
"""

from __future__ import annotations

import hmac
import re
import signal
import subprocess
from typing import Any

import pytest
import yaml

import gateway.__main__ as cli
from gateway.app import build_app
from gateway.config import ConfigError, GatewayConfig, parse_config
from tests.conftest import ROOT, gateway_client
from tests.fixtures_faults import assert_error

pytestmark = pytest.mark.anyio

TOKENS_ENV = "GATEWAY_TEST_TOKENS"
TOKENS = ["alpha-token-1", "beta-token-22", "gamma-token-333"]
ECHO = {"type": "workflow", "source": "examples.echo:workflow"}


def auth_config(**extra: Any) -> dict[str, Any]:
    return {
        "default_service": "echo",
        "auth": {"tokens_env": TOKENS_ENV},
        "services": {
            "echo": ECHO,
            "counter": {"type": "workflow", "source": "examples.counter:workflow"},
        },
        **extra,
    }


@pytest.fixture
def tokens_in_env(monkeypatch) -> None:
    monkeypatch.setenv(TOKENS_ENV, " , ".join(TOKENS) + ",")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def every_operation(client) -> list[tuple[str, str]]:
    """(method, concrete path) of every documented route, plus the docs assets and a 404."""
    document = (await client.get("/openapi.json", headers=bearer(TOKENS[0]))).json()
    operations = [
        (method.upper(), re.sub(r"{[^}]+}", "x", path))
        for path, methods in document["paths"].items()
        for method in methods
    ]
    operations += [
        ("GET", "/docs/assets/swagger-ui.css"),
        ("GET", "/docs/assets/swagger-ui-bundle.js"),
        ("GET", "/no/such/route"),
    ]
    return operations


def assert_unauthorized(response) -> None:
    body = assert_error(response, 401)
    assert body["error"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"


async def test_every_route_but_healthz_needs_a_valid_token(tokens_in_env) -> None:
    async with gateway_client(auth_config()) as client:
        operations = await every_operation(client)
        paths = {path for _, path in operations}
        for expected in ("/openapi.json", "/docs", "/metrics", "/", "/readyz"):
            assert expected in paths
        assert any(p.startswith("/services/echo/") for p in paths)
        assert any(p.startswith("/control_plane/") for p in paths)
        assert ("GET", "/healthz") in operations
        wrong = [
            {},
            bearer("not-a-token"),
            bearer(TOKENS[0][:-1]),  # a prefix of a real token
            bearer(TOKENS[0] + "x"),
            bearer(",".join(TOKENS)),  # the env value itself
            bearer(""),
            {"Authorization": TOKENS[0]},  # no scheme
            {"Authorization": f"Basic {TOKENS[0]}"},
            {"Authorization": f"Token {TOKENS[0]}"},
        ]
        internal = {
            "/control_plane/services/register",
            "/control_plane/services/deregister",
            "/control_plane/process_message",
            "/services/echo/process_message",
        }
        for method, path in operations:
            if path == "/healthz":
                continue
            for headers in wrong:
                response = await client.request(method, path, headers=headers, json={})
                if path in internal or path.endswith("/process_message"):  # service tokens only
                    assert "remote services are off" in assert_error(response, 403)["detail"]
                    continue
                assert response.status_code == 401, (method, path, headers, response.text)
                assert_unauthorized(response)
        # Liveness stays open, with or without a token.
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/healthz", headers=bearer("wrong"))).status_code == 200


async def test_any_configured_token_is_accepted(tokens_in_env) -> None:
    async with gateway_client(auth_config()) as client:
        for token in TOKENS:
            for path in (
                "/",
                "/readyz",
                "/openapi.json",
                "/docs",
                "/docs/assets/swagger-ui.css",
                "/metrics",
                "/control_plane/services",
                "/services/echo/",
            ):
                response = await client.get(path, headers=bearer(token))
                assert response.status_code == 200, (token, path, response.text[:200])
            response = await client.post(
                "/services/echo/run", json={"kwargs": {"message": token}}, headers=bearer(token)
            )
            assert response.json()["result"] == token
        # The scheme is case-insensitive, as RFC 7235 says.
        lower = await client.get("/", headers={"Authorization": f"bearer {TOKENS[1]}"})
        assert lower.status_code == 200
        assert_error(await client.get("/control_plane/tasks/x", headers=bearer(TOKENS[2])), 404)
        # The document says so too.
        document = (await client.get("/openapi.json", headers=bearer(TOKENS[0]))).json()
        assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        assert document["security"] == [{"bearer": []}]
        assert document["paths"]["/healthz"]["get"]["security"] == []


async def test_tokens_are_compared_in_constant_time(tokens_in_env, monkeypatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    async with gateway_client(auth_config()) as client:
        for presented, expected_status in (
            (TOKENS[0], 200),  # matches the first: the others are still compared
            (TOKENS[2], 200),
            ("wrong", 401),
        ):
            calls.clear()
            response = await client.get("/", headers=bearer(presented))
            assert response.status_code == expected_status
            assert sorted(b for _, b in calls) == sorted(t.encode() for t in TOKENS)
            assert all(a == presented.encode() for a, _ in calls)
        # /healthz never looks at tokens.
        calls.clear()
        await client.get("/healthz")
        assert calls == []


@pytest.mark.parametrize("value", [None, "", "  ", " , ,, "])
def test_auth_configured_without_tokens_stops_start_up(monkeypatch, value) -> None:
    if value is None:
        monkeypatch.delenv(TOKENS_ENV, raising=False)
    else:
        monkeypatch.setenv(TOKENS_ENV, value)
    with pytest.raises(ConfigError, match=TOKENS_ENV):
        build_app(parse_config(auth_config(), "gateway.yaml"))


def test_tokens_never_live_in_the_yaml() -> None:
    for auth in ({"tokens_env": TOKENS_ENV, "tokens": TOKENS}, {"tokens": TOKENS}):
        with pytest.raises(ConfigError, match="auth"):
            parse_config({**auth_config(), "auth": auth}, "gateway.yaml")


def test_the_cli_refuses_to_start_without_tokens(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.delenv(TOKENS_ENV, raising=False)
    monkeypatch.setattr(cli, "configure_logging", lambda *a, **k: None)
    monkeypatch.setattr(cli.uvicorn, "run", lambda *a, **k: pytest.fail("must not serve"))
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(auth_config()))
    assert cli.main(["--config", str(path)]) == 2
    assert TOKENS_ENV in capsys.readouterr().err


# -- CORS ------------------------------------------------------------------------------------------
PREFLIGHT = {"Access-Control-Request-Method": "POST"}


async def test_cors_is_closed_by_default() -> None:
    async with gateway_client({"services": {"echo": ECHO}}) as client:
        for origin in ("http://evil.example", "null", "http://127.0.0.1:8000"):
            response = await client.get("/", headers={"Origin": origin})
            assert response.status_code == 200
            assert "access-control-allow-origin" not in response.headers
            preflight = await client.options(
                "/control_plane/tasks", headers={"Origin": origin, **PREFLIGHT}
            )
            assert "access-control-allow-origin" not in preflight.headers
            assert_error(preflight, 405)


async def test_cors_is_open_for_configured_origins_only(tokens_in_env) -> None:
    allowed = "http://app.example"
    async with gateway_client(auth_config(cors={"allow_origins": [allowed]})) as client:
        preflight = await client.options(
            "/control_plane/tasks",
            headers={
                "Origin": allowed,
                **PREFLIGHT,
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        # A preflight carries no credentials, so it is answered before auth.
        assert preflight.status_code == 200, preflight.text
        assert preflight.headers["access-control-allow-origin"] == allowed
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()

        response = await client.get("/", headers={"Origin": allowed, **bearer(TOKENS[0])})
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == allowed
        # A 401 is readable by the allowed page too, and still JSON.
        refused = await client.get("/", headers={"Origin": allowed})
        assert_unauthorized(refused)
        assert refused.headers["access-control-allow-origin"] == allowed

        foreign = "http://evil.example"
        response = await client.get("/", headers={"Origin": foreign, **bearer(TOKENS[0])})
        assert "access-control-allow-origin" not in response.headers
        preflight = await client.options(
            "/control_plane/tasks", headers={"Origin": foreign, **PREFLIGHT}
        )
        assert "access-control-allow-origin" not in preflight.headers
        body = assert_error(preflight, 400)
        assert "origin" in body["detail"].lower()


# -- bind address ----------------------------------------------------------------------------------
def test_the_default_bind_is_loopback(tmp_path, monkeypatch) -> None:
    assert GatewayConfig().host == "127.0.0.1"
    assert (
        parse_config(
            {"services": {"e": {"type": "workflow", "source": "examples.echo:workflow"}}}
        ).host
        == "127.0.0.1"
    )

    # `python -m gateway` with a config that names no host binds to loopback.
    served: dict[str, Any] = {}
    monkeypatch.setattr(cli, "configure_logging", lambda *a, **k: None)
    monkeypatch.setattr(cli.uvicorn, "run", lambda app, **kwargs: served.update(kwargs))
    monkeypatch.setattr(signal, "signal", lambda *a: None)  # keep pytest's own handlers
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"services": {"echo": ECHO}}))
    assert cli.main(["--config", str(path)]) == 0
    assert served["host"] == "127.0.0.1"

    # `make run` binds to loopback unless HOST is given.
    dry_run = subprocess.run(
        ["make", "-n", "-o", ".venv/.installed", "run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert re.search(r"uvicorn gateway\.app:app --host 127\.0\.0\.1\b", dry_run), dry_run
