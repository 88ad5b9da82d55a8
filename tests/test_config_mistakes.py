"""Config mistakes a new user makes stop start-up with one line that says what and where.

Duplicate YAML keys, prefixes that shadow the gateway's own routes, no services, references to
unknown services (naming the key), `store.path` relative to the config file; the same one line
from `uvicorn gateway.app:app` as from `python -m gateway`; `GATEWAY_CONFIG` honoured by
`make run`; a workflow waiting for input without a human_service says so.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from workflows import Context, Workflow, step
from workflows.events import Event, InputRequiredEvent, StartEvent, StopEvent

from gateway.app import build_app
from gateway.config import BUILT_IN_PATHS, ConfigError, load_config, parse_config
from tests.conftest import ROOT, gateway_client

ECHO = {"type": "workflow", "source": "examples.echo:workflow"}


def _load(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return load_config(path)


def _refused(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "my.yaml")
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_repeated_key_is_refused_with_both_lines(tmp_path: Path) -> None:
    text = (
        "services:\n"
        "  echo: {type: workflow, source: examples.echo:workflow}\n"
        "  echo: {type: workflow, source: examples.counter:workflow}\n"
    )
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    assert "duplicate key 'echo' (first defined on line 2)" in str(info.value)
    assert "line 3" in str(info.value)
    nested = "services:\n  echo: {type: workflow, timeout: 1, timeout: 2, source: x:y}\n"
    with pytest.raises(ConfigError, match="duplicate key 'timeout'"):
        _load(tmp_path, nested)


@pytest.mark.parametrize("built_in", [*BUILT_IN_PATHS, "/docs/extra"])
def test_a_prefix_that_shadows_a_built_in_route_is_refused(built_in: str) -> None:
    message = _refused({"services": {"echo": {**ECHO, "prefix": built_in}}})
    assert "service 'echo'" in message and "would shadow" in message


def test_prefixes_that_hide_each_other_are_refused() -> None:
    message = _refused(
        {"services": {"a": {**ECHO, "prefix": "/services"}, "b": ECHO}}  # b: /services/b
    )
    assert "overlaps" in message and "'a'" in message
    # a name that merely starts like a built-in is fine
    parse_config({"services": {"docsbot": {**ECHO, "prefix": "/docsbot"}}})


@pytest.mark.parametrize(
    ("entry", "clash"),
    [
        # a custom service whose own `prefix` is the control plane's: services are mounted
        # first, so it answered every /control_plane request (404 for /control_plane/services)
        ({"type": "custom", "source": "tests.fixtures_faults:SquattingService"}, "would shadow"),
        # a custom entry that is a workflow service mounts the llama-agents protocol, whose
        # /workflows/{name}/run its prefix hid (the config checked only `type: workflow`)
        (
            {
                "type": "custom",
                "source": "tests.fixtures_faults:workflow_service",
                "prefix": "/workflows",
            },
            "overlaps prefix '/workflows'",
        ),
    ],
)
def test_a_prefix_only_the_built_service_shows_is_refused_too(entry: dict, clash: str) -> None:
    config = parse_config({"services": {"mine": entry}})  # nothing in the entry to refuse
    with pytest.raises(ConfigError) as caught:
        build_app(config)
    assert clash in str(caught.value) and "'mine'" in str(caught.value)


@pytest.mark.parametrize(
    ("name", "prefix"),
    [("echo", "/x/../control_plane"), ("echo", "/x/./y"), ("..", None), (".", None)],
)
def test_a_prefix_with_dot_segments_is_refused(name: str, prefix: str | None) -> None:
    # Starlette matches the path as written, but clients resolve dot segments first: with
    # prefix /x/../control_plane a POST to its /run went to /control_plane/run, and a service
    # named '..' (prefix /services/..) was out of reach at /run
    entry = {**ECHO, "prefix": prefix} if prefix else ECHO
    message = _refused({"services": {name: entry}})
    assert "'.' or '..' segment" in message and f"service {name!r}" in message


def test_no_services_is_refused() -> None:
    assert "services: none configured" in _refused({"services": {}})
    assert "services: none configured" in _refused({"name": "empty"})


def test_an_unknown_reference_names_its_key() -> None:
    agent = {"type": "agent", "source": "examples.agent:build_agent", "tools": ["nope"]}
    message = _refused({"services": {"bot": agent}})
    assert "service 'bot': tools: refers to unknown service 'nope'" in message
    flow = {**ECHO, "human_service": "nobody"}
    message = _refused({"services": {"flow": flow}})
    assert "service 'flow': human_service: refers to unknown service 'nobody'" in message


def test_store_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    folder = tmp_path / "deploy"
    folder.mkdir()
    services = "services:\n  e: {type: workflow, source: examples.echo:workflow}\n"
    config = _load(folder, "store: {kind: sqlite, path: data/gw.db}\n" + services)
    assert Path(config.store.path) == folder / "data" / "gw.db"
    absolute = tmp_path / "elsewhere.db"
    config = _load(folder, f"store: {{kind: sqlite, path: {absolute}}}\n" + services)
    assert Path(config.store.path) == absolute


def _bad_config(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"services": {"echo": {**ECHO, "max_concurrent_tasks": "x"}}}))
    return path


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "uvicorn", "gateway.app:app", "--port", "1"],
        [sys.executable, "-m", "gateway"],
    ],
    ids=["uvicorn", "python-m-gateway"],
)
def test_a_config_error_is_one_line_and_a_non_zero_exit(tmp_path: Path, command: list) -> None:
    path = _bad_config(tmp_path)
    done = subprocess.run(
        command,
        cwd=ROOT,
        env={"GATEWAY_CONFIG": str(path), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert lines == [
        f"error: {path}: service 'echo': max_concurrent_tasks: Input should be a valid integer, "
        "unable to parse string as an integer"
    ]


def test_make_run_honours_gateway_config_and_config() -> None:
    def dry_run(*args: str, env: dict[str, str] | None = None) -> str:
        base = {"PATH": "/usr/bin:/bin", **(env or {})}
        done = subprocess.run(
            ["make", "-n", "-W", "pyproject.toml", "run", *args],
            cwd=ROOT,
            env=base,
            capture_output=True,
            text=True,
            timeout=30,
        )
        return done.stdout

    assert "GATEWAY_CONFIG=config.yaml " in dry_run()
    assert "GATEWAY_CONFIG=my.yaml " in dry_run(env={"GATEWAY_CONFIG": "my.yaml"})
    assert "GATEWAY_CONFIG=other.yaml " in dry_run("CONFIG=other.yaml")


# -- a workflow that asks for input with nobody to ask on its behalf ------------------------------
class Answer(Event):
    name: str


class AsksNobody(Workflow):
    @step
    async def ask(self, ctx: Context, ev: StartEvent) -> StopEvent:
        reply = await ctx.wait_for_event(
            Answer, waiter_event=InputRequiredEvent(prefix="name?"), waiter_id="n"
        )
        return StopEvent(result=f"hello {reply.name}")


asks_nobody = AsksNobody(timeout=None)


@pytest.mark.anyio
async def test_waiting_for_input_without_a_human_service_shows_and_says_so() -> None:
    services = {
        "asks": {"type": "workflow", "source": "tests.test_config_mistakes:asks_nobody"},
        "asks_briefly": {
            "type": "workflow",
            "source": "tests.test_config_mistakes:asks_nobody",
            "timeout": 0.5,
        },
    }
    async with gateway_client({"services": services}) as client:

        async def status_of(task_id: str) -> str:
            return (await client.get(f"/control_plane/tasks/{task_id}")).json()["status"]

        async def submit(service: str) -> str:
            body = {"service": service, "input": {}}
            return (await client.post("/control_plane/tasks", json=body)).json()["task_id"]

        task_id = await submit("asks")
        with anyio.fail_after(10):
            while await status_of(task_id) != "waiting_for_input":
                await anyio.sleep(0.01)
        sent = await client.post(
            f"/control_plane/tasks/{task_id}/events",
            json={"event": "Answer", "data": {"name": "Ada"}},
        )
        assert sent.status_code == 202, sent.text
        done = await client.get(f"/control_plane/tasks/{task_id}/result", params={"wait": 10})
        assert (done.json()["status"], done.json()["result"]) == ("completed", "hello Ada")

        late = await submit("asks_briefly")
        ended = await client.get(f"/control_plane/tasks/{late}/result", params={"wait": 10})
    record = ended.json()
    assert record["status"] == "timed_out"
    assert "while waiting for input" in record["error"]
    assert "InputRequiredEvent" in record["error"]
