"""The llama-agents (`WorkflowServer`) protocol over our workflow services, in process.

Streaming and the real `WorkflowClient` against real servers (ours and `WorkflowServer`) are in
tests/test_llama_agents_client.py; here: shapes, status codes, continuation, cancel, config.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import gateway_client

pytestmark = pytest.mark.anyio

WORKFLOWS = {
    "echo": {"type": "workflow", "source": "examples.echo:workflow"},
    "stats": {"type": "workflow", "source": "examples.pipeline:build"},
    "counter": {"type": "workflow", "source": "examples.counter:workflow"},
    "approval": {"type": "workflow", "source": "examples.approval:workflow"},
    "wordstats": {"type": "component", "source": "examples.components:word_stats"},
}
HANDLER_KEYS = {
    "handler_id",
    "workflow_name",
    "run_id",
    "error",
    "result",
    "result_unreadable",
    "status",
    "started_at",
    "updated_at",
    "completed_at",
}


def config(**extra: Any) -> dict[str, Any]:
    return {"services": WORKFLOWS, **extra}


async def test_lists_workflow_services_only_and_reports_health() -> None:
    async with gateway_client(config()) as client:
        listed = await client.get("/workflows")
        assert listed.status_code == 200
        assert sorted(listed.json()["workflows"]) == ["approval", "counter", "echo", "stats"]
        health = await client.get("/health")
        assert health.json() == {"status": "healthy"}


async def test_run_waits_and_answers_the_handler_with_the_stop_event() -> None:
    async with gateway_client(config()) as client:
        answer = await client.post("/workflows/echo/run", json={"start_event": {"message": "hi"}})
        assert answer.status_code == 200
        handler = answer.json()
        assert set(handler) == HANDLER_KEYS
        assert handler["status"] == "completed"
        assert handler["workflow_name"] == "echo"
        assert handler["error"] is None
        assert handler["result"] == {
            "value": {"result": "hi"},
            "qualified_name": "workflows.events.StopEvent",
            "type": "StopEvent",
            "types": None,
        }
        assert handler["completed_at"] is not None
        # the handler is one of our tasks: the control plane sees it like any other
        task = await client.get(f"/control_plane/tasks/{handler['run_id']}")
        assert task.status_code == 200
        assert task.json()["service"] == "echo"


async def test_start_event_forms_kwargs_and_envelope_are_accepted() -> None:
    async with gateway_client(config()) as client:
        kwargs = await client.post("/workflows/echo/run", json={"kwargs": {"message": "kw"}})
        assert kwargs.json()["result"]["value"] == {"result": "kw"}
        wrapped = {"type": "StartEvent", "value": {"message": "env"}}
        envelope = await client.post("/workflows/echo/run", json={"start_event": wrapped})
        assert envelope.json()["result"]["value"] == {"result": "env"}
        empty = await client.post("/workflows/echo/run", json={})
        assert empty.json()["result"]["value"] == {"result": ""}


async def test_failed_run_is_500_with_the_handler_and_its_error() -> None:
    async with gateway_client(config()) as client:
        failed = await client.post("/workflows/stats/run", json={"start_event": {"numbers": []}})
        assert failed.status_code == 500
        body = failed.json()
        assert body["status"] == "failed"
        assert "numbers" in body["error"]
        assert body["result"] is None
        # GET /handlers/{id}: 500 for a failed handler, as the protocol says
        again = await client.get(f"/handlers/{body['handler_id']}")
        assert again.status_code == 500 and again.json()["status"] == "failed"


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        ("/workflows/nope/run", {}, 404, "Workflow not found"),
        ("/workflows/echo/run", {"start_event": 5}, 400, "start_event"),
        ("/workflows/echo/run", {"start_event": {"type": "Nope", "value": {}}}, 400, "Nope"),
        ("/workflows/echo/run", {"context": {"state": {}}}, 400, "handler_id"),
        ("/workflows/echo/run", {"handler_id": "a/b"}, 422, "handler_id"),
    ],
)
async def test_bad_runs_are_refused_with_a_reason(
    path: str, body: dict, status: int, words: str
) -> None:
    async with gateway_client(config()) as client:
        answer = await client.post(path, json=body)
        assert answer.status_code == status, answer.text
        assert words in str(answer.json()["detail"]) or words in answer.text


async def test_malformed_json_is_400() -> None:
    async with gateway_client(config()) as client:
        answer = await client.post("/workflows/echo/run", content=b"{bad")
        assert answer.status_code == 400


async def test_run_nowait_then_handler_is_202_until_done() -> None:
    async with gateway_client(config()) as client:
        started = await client.post(
            "/workflows/approval/run-nowait", json={"start_event": {"request": "deploy"}}
        )
        assert started.status_code == 200
        handler = started.json()
        assert handler["status"] == "running" and handler["result"] is None
        running = await client.get(f"/handlers/{handler['handler_id']}")
        assert running.status_code == 202
        missing = await client.get("/handlers/no-such-handler")
        assert missing.status_code == 404
        assert missing.json()["detail"] == "Handler not found"
        cancelled = await client.post(f"/handlers/{handler['handler_id']}/cancel")
        assert cancelled.json() == {"status": "cancelled"}
        final = await client.get(f"/handlers/{handler['handler_id']}")
        assert final.status_code == 500 and final.json()["status"] == "cancelled"
        # cancelling an ended handler: not found (no purge), as the protocol's server answers
        again = await client.post(f"/handlers/{handler['handler_id']}/cancel")
        assert again.status_code == 404
        purged = await client.post(f"/handlers/{handler['handler_id']}/cancel?purge=true")
        assert purged.json() == {"status": "deleted"}


async def test_send_event_answers_an_input_required_event() -> None:
    async with gateway_client(config()) as client:
        started = await client.post(
            "/workflows/approval/run-nowait", json={"start_event": {"request": "deploy"}}
        )
        handler_id = started.json()["handler_id"]
        event = {"type": "HumanResponseEvent", "value": {"_data": {"response": "yes"}}}
        sent = await client.post(f"/events/{handler_id}", json={"event": event})
        assert sent.status_code == 200, sent.text
        assert sent.json() == {"status": "sent"}
        result = await client.get(f"/control_plane/tasks/{started.json()['run_id']}/result?wait=5")
        assert result.json()["status"] == "completed"
        done = await client.get(f"/handlers/{handler_id}")
        assert done.status_code == 200
        assert done.json()["result"]["value"]["result"]["approved"] is True
        late = await client.post(f"/events/{handler_id}", json={"event": event})
        assert late.status_code == 409
        assert late.json()["detail"] == "Workflow already completed"


async def test_send_event_refuses_unknown_or_invalid_events() -> None:
    async with gateway_client(config()) as client:
        started = await client.post(
            "/workflows/approval/run-nowait", json={"start_event": {"request": "x"}}
        )
        handler_id = started.json()["handler_id"]
        unknown = await client.post(
            f"/events/{handler_id}", json={"event": {"type": "os.system", "value": {}}}
        )
        assert unknown.status_code == 400
        forged = await client.post(
            f"/events/{handler_id}",
            json={"event": {"qualified_name": "subprocess.Popen", "value": {}}},
        )
        assert forged.status_code == 400
        empty = await client.post(f"/events/{handler_id}", json={})
        assert empty.status_code == 400
        assert (await client.post("/events/nope", json={"event": {"type": "X"}})).status_code == 404
        await client.post(f"/handlers/{handler_id}/cancel")


async def test_handler_id_continues_the_previous_run_in_its_session() -> None:
    async with gateway_client(config()) as client:
        first = await client.post("/workflows/counter/run", json={"handler_id": "tally"})
        second = await client.post("/workflows/counter/run", json={"handler_id": "tally"})
        assert first.status_code == second.status_code == 200
        assert first.json()["handler_id"] == second.json()["handler_id"] == "tally"
        assert first.json()["run_id"] != second.json()["run_id"]
        counts = [r.json()["result"]["value"]["result"] for r in (first, second)]
        assert counts[1] != counts[0]  # the context carried over (signed, in our store)
        listed = (await client.get("/handlers", params={"workflow_name": "counter"})).json()
        assert [h["handler_id"] for h in listed["handlers"]] == ["tally"]
        assert listed["handlers"][0]["run_id"] == second.json()["run_id"]
        other = await client.post("/workflows/echo/run", json={"handler_id": "tally"})
        assert other.status_code == 409


async def test_handler_ids_that_look_like_continuations_do_not_clash() -> None:
    async with gateway_client(config()) as client:
        # a client names a handler `abc.2` before handler `abc` runs a second time
        named = await client.post("/workflows/echo/run", json={"handler_id": "abc.2", "kwargs": {}})
        assert named.status_code == 200
        for _ in range(2):
            again = await client.post("/workflows/echo/run", json={"handler_id": "abc"})
            assert again.status_code == 200, again.text
        assert again.json()["run_id"] not in ("abc", "abc.2")
        # each id shows its own handler's run
        assert (await client.get("/handlers/abc.2")).json()["run_id"] == "abc.2"
        assert (await client.get("/handlers/abc")).json()["run_id"] == again.json()["run_id"]
        # a continuation's task id is not a handler of its own
        assert (await client.get(f"/handlers/{again.json()['run_id']}")).status_code == 404


async def test_a_purged_handler_is_gone_and_its_id_can_start_afresh() -> None:
    async with gateway_client(config()) as client:
        for _ in range(2):
            await client.post("/workflows/counter/run", json={"handler_id": "gone"})
        purged = await client.post("/handlers/gone/cancel", params={"purge": "true"})
        assert purged.json() == {"status": "deleted"}
        assert (await client.get("/handlers/gone")).status_code == 404
        assert (await client.get("/results/gone")).status_code == 404
        listed = (await client.get("/handlers")).json()["handlers"]
        assert "gone" not in [h["handler_id"] for h in listed]
        fresh = await client.post("/workflows/counter/run", json={"handler_id": "gone"})
        assert fresh.status_code == 200, fresh.text
        first = await client.post("/workflows/counter/run", json={"handler_id": "new"})
        # no context carried over from the purged runs
        assert fresh.json()["result"] == first.json()["result"]
        assert (await client.get("/handlers/gone")).json()["run_id"] == fresh.json()["run_id"]


async def test_concurrent_purges_of_one_handler_answer_in_the_protocol_s_words() -> None:
    import anyio

    async with gateway_client(config()) as client:
        await client.post("/workflows/approval/run-nowait", json={"handler_id": "twice"})
        answers = []

        async def purge() -> None:
            answers.append(await client.post("/handlers/twice/cancel", params={"purge": "true"}))

        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(purge)
        assert any(a.json() == {"status": "deleted"} for a in answers)
        for answer in answers:
            assert answer.status_code in (200, 404)
            if answer.status_code == 404:
                assert answer.json()["detail"] == "Handler not found"
        assert (await client.get("/handlers/twice")).status_code == 404


async def test_an_event_given_as_a_deeply_nested_json_string_is_400() -> None:
    async with gateway_client(config()) as client:
        started = await client.post("/workflows/approval/run-nowait", json={"kwargs": {}})
        handler_id = started.json()["handler_id"]
        deep = "[" * 100_000 + "]" * 100_000
        sent = await client.post(f"/events/{handler_id}", json={"event": deep})
        assert sent.status_code == 400
        assert sent.json()["detail"] == "the event is nested too deeply"
        start = await client.post("/workflows/echo/run", json={"start_event": deep})
        assert start.status_code == 400
        await client.post(f"/handlers/{handler_id}/cancel")


async def test_handlers_filter_by_status_and_workflow() -> None:
    async with gateway_client(config()) as client:
        await client.post("/workflows/echo/run", json={"start_event": {"message": "a"}})
        await client.post("/workflows/stats/run", json={"start_event": {"numbers": []}})
        running = await client.post("/workflows/approval/run-nowait", json={})
        everything = (await client.get("/handlers")).json()["handlers"]
        assert {h["workflow_name"] for h in everything} == {"echo", "stats", "approval"}
        failed = (await client.get("/handlers", params={"status": "failed"})).json()["handlers"]
        assert [h["workflow_name"] for h in failed] == ["stats"]
        several = await client.get(
            "/handlers", params=[("status", "running"), ("status", "completed")]
        )
        assert {h["status"] for h in several.json()["handlers"]} == {"running", "completed"}
        echo = await client.get("/handlers", params={"workflow_name": "echo"})
        assert [h["workflow_name"] for h in echo.json()["handlers"]] == ["echo"]
        await client.post(f"/handlers/{running.json()['handler_id']}/cancel")


async def test_schema_events_and_representation() -> None:
    async with gateway_client(config()) as client:
        schema = (await client.get("/workflows/echo/schema")).json()
        assert schema["start"]["title"] == "StartEvent"
        assert schema["stop"]["title"] == "StopEvent"
        events = (await client.get("/workflows/stats/events")).json()["events"]
        assert {"Parsed", "Validated", "StopEvent"} <= {e["title"] for e in events}
        graph = (await client.get("/workflows/stats/representation")).json()["graph"]
        assert {"parse", "validate"} <= {n["id"] for n in graph["nodes"]}
        assert (await client.get("/workflows/nope/schema")).status_code == 404


async def test_the_protocol_can_move_or_be_switched_off() -> None:
    moved = config(protocols={"llama_agents": {"prefix": "/llama"}})
    async with gateway_client(moved) as client:
        assert (await client.get("/llama/workflows")).status_code == 200
        assert (await client.get("/workflows")).status_code == 404
    off = config(protocols={"llama_agents": {"enabled": False}})
    async with gateway_client(off) as client:
        assert (await client.get("/workflows")).status_code == 404
        assert (await client.get("/health")).status_code == 404


@pytest.mark.parametrize(
    ("prefix", "services", "clash"),
    [
        ("/ui", {}, "/ui"),  # would be served without a token, under the console's open prefix
        ("/control_plane", {}, "/control_plane"),
        ("/docs", {}, "/docs"),
        ("/services/echo", {}, "'echo'"),
        (
            "",
            {
                "other": {
                    "type": "workflow",
                    "source": "examples.echo:workflow",
                    "prefix": "/events",
                }
            },
            "'other'",
        ),
    ],
)
def test_a_protocol_prefix_that_clashes_is_refused(
    prefix: str, services: dict[str, Any], clash: str
) -> None:
    from gateway.config import ConfigError, parse_config

    bad = {
        "services": {**WORKFLOWS, **services},
        "protocols": {"llama_agents": {"prefix": prefix}},
    }
    with pytest.raises(ConfigError, match="protocols.llama_agents.prefix") as raised:
        parse_config(bad, "test")
    assert clash in str(raised.value)
    # switched off, the same prefix is no clash
    bad["protocols"]["llama_agents"]["enabled"] = False
    parse_config(bad, "test")


async def test_auth_applies_to_the_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROTO_TOKENS", "s3cret")
    async with gateway_client(config(auth={"tokens_env": "PROTO_TOKENS"})) as client:
        assert (await client.get("/workflows")).status_code == 401
        ok = await client.get("/workflows", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


async def test_openapi_documents_the_protocol_under_its_own_tag() -> None:
    async with gateway_client(config()) as client:
        document = (await client.get("/openapi.json")).json()
        tagged = {
            path
            for path, operations in document["paths"].items()
            for operation in operations.values()
            if "llama-agents protocol" in operation.get("tags", [])
        }
        assert {"/workflows", "/workflows/{name}/run", "/events/{handler_id}", "/health"} <= tagged


async def test_event_stream_frames_cursors_and_the_end() -> None:
    async with gateway_client(config()) as client:
        done = await client.post("/workflows/stats/run", json={"start_event": {"numbers": [1, 2]}})
        handler_id = done.json()["handler_id"]
        sse = await client.get(f"/events/{handler_id}", params={"after_sequence": "-1"})
        assert sse.headers["content-type"].startswith("text/event-stream")
        frames = [f for f in sse.text.split("\n\n") if f.strip()]
        ids = [int(f.split("\n")[0].removeprefix("id: ")) for f in frames]
        assert ids == sorted(ids) and len(set(ids)) == len(ids) == 3
        ndjson = await client.get(
            f"/events/{handler_id}", params={"after_sequence": "-1", "sse": "false"}
        )
        assert ndjson.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in ndjson.text.splitlines()]
        assert [e["type"] for e in lines] == ["Progress", "Progress", "StopEvent"]
        assert lines[0]["qualified_name"] == "examples.pipeline.Progress"
        bare = await client.get(
            f"/events/{handler_id}",
            params={"after_sequence": "-1", "sse": "false", "include_qualified_name": "false"},
        )
        assert json.loads(bare.text.splitlines()[0])["qualified_name"] is None
        # resuming after the first event (query or Last-Event-ID) gives exactly the rest
        rest = await client.get(f"/events/{handler_id}", params={"after_sequence": ids[0]})
        by_header = await client.get(
            f"/events/{handler_id}", headers={"Last-Event-ID": str(ids[0])}
        )
        assert rest.text == by_header.text == "\n\n".join(frames[1:]) + "\n\n"
        # "now" (the default) on an ended handler, or a cursor at its end: nothing left, 204
        assert (await client.get(f"/events/{handler_id}")).status_code == 204
        end = await client.get(f"/events/{handler_id}", params={"after_sequence": ids[-1]})
        assert end.status_code == 204
        bad = await client.get(f"/events/{handler_id}", params={"after_sequence": "soon"})
        assert bad.status_code == 400
