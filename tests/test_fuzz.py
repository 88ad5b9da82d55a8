"""Schema fuzzing: schemathesis against `/openapi.json` of the real uvicorn server.

The server serves the demo deployment (every demo service that builds today). For every
operation, generated requests (valid and invalid) must never get a 5xx, and every response must
conform to the document: documented status, documented content type, schema-valid body.

The default run is short (`FUZZ_EXAMPLES`, default 5 per operation); `make fuzz` runs a longer
one. When this finds something, fix the gateway (handler or schema), not the check.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import anyio
import httpx
import hypothesis
import pytest
import schemathesis
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.app import build_app
from gateway.config import parse_config
from tests.conftest import running_server
from tests.fixtures_faults import demo_services
from tests.service_tokens import REMOTE, SERVICE_AUTH

PROTOCOL_TAG = "llama-agents protocol"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "5"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def fuzz_config(tmp_path) -> dict[str, Any]:
    return {
        "name": "demo",
        "default_service": "echo",
        "shutdown_grace": 1,
        "store": {"kind": "sqlite", "path": str(tmp_path / "fuzz.db")},
        # Runs that wait for a person (approval, human queues) end after 0.2 s instead of holding
        # the fuzzer's request open for the default `wait`.
        "services": demo_services(run_timeout=0.2),
        # The internal endpoints are fuzzed too, past their service-token check (every call
        # carries the token; with user auth off it means nothing to the other routes).
        **REMOTE,
    }


def served_document(config: dict[str, Any]) -> dict[str, Any]:
    """`GET /openapi.json` of an app built from `config` (no lifespan needed for it)."""
    app = build_app(parse_config({**config, "store": {"kind": "memory"}}, "fuzz-config"))

    async def get() -> dict[str, Any]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://fuzz") as client:
            return (await client.get("/openapi.json")).json()

    return anyio.run(get)


# The operations are known at collection time (one test per operation); the requests go to the
# real server, whose document is checked to be this one.
DOCUMENT = served_document(fuzz_config(Path(tempfile.gettempdir())))
# The aggregate event stream never ends by design (it is fuzzed with a bounded read in
# tests/test_event_feed.py instead): a generated call would hold the fuzzer forever.
schema = schemathesis.openapi.from_dict(DOCUMENT).exclude(path="/control_plane/events")


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    with running_server(fuzz_config(tmp), tmp, env={"GATEWAY_SECRET": "fuzz-secret"}) as server:
        yield server


def test_the_real_server_serves_the_fuzzed_document(fuzz_server) -> None:
    served = httpx.get(f"{fuzz_server.base_url}/openapi.json").json()
    assert served == DOCUMENT
    for name in demo_services():
        assert any(path.startswith(f"/services/{name}/") for path in served["paths"]), name


# One test per operation, its id `METHOD /path`, so one can be selected:
#   pytest tests/test_fuzz.py -k "POST /control_plane/tasks"
OPERATIONS = [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: f"{op.method.upper()} {op.path}")
def test_no_5xx_and_every_response_matches_the_schema(operation, fuzz_server):
    checks = CHECKS
    if PROTOCOL_TAG in (operation.tags or []):
        # That protocol answers 500 *with the handler* for a failed or cancelled run: a
        # documented outcome there (the schema check still holds it to the handler's shape).
        checks = [check for check in CHECKS if check is not not_a_server_error]

    @hypothesis.given(case=operation.as_strategy())
    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize="FUZZ_EXAMPLES" not in os.environ,  # the default run is reproducible
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    def one_case(case):
        try:
            case.call_and_validate(
                base_url=fuzz_server.base_url, checks=checks, timeout=30, headers=SERVICE_AUTH
            )
        finally:
            if case.path.endswith("/toggle_agent_running"):
                # The fuzzer may have paused an agent; paused agents hold their tasks (by
                # design), so a later `/run` with a long `wait` would legitimately wait that long.
                resumed = httpx.post(
                    f"{fuzz_server.base_url}{case.formatted_path}", json={"state": "running"}
                )
                assert resumed.json() == {"running": True}

    one_case()


def test_the_fuzzed_server_logged_no_crash(fuzz_server) -> None:
    log = fuzz_server.log()
    for sign in ("unhandled error", "could not report the end of task", "Traceback"):
        at = log.find(sign)
        assert at < 0, log[max(0, at - 500) : at + 4000]
    assert httpx.get(f"{fuzz_server.base_url}/readyz").status_code == 200
