"""`agent-gateway` driven as a person would: in a pseudo-terminal (pexpect) and piped, against
the real server. Exit codes: 0 completed, 1 failed, 2 usage, 3 timed out, 4 cancelled."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib

import httpx
import pexpect
import pytest
import yaml
from click.testing import CliRunner, Result

from gateway.cli import cli
from gateway.client import GatewayClient
from tests.conftest import ROOT, free_port, running_server

TOKEN = "cli-test-token"
CONFIG = {
    "auth": {"tokens_env": "CLI_TEST_TOKENS"},
    "services": {
        "echo": {"type": "workflow", "source": "examples.echo:workflow"},
        "stats": {"type": "workflow", "source": "examples.pipeline:build"},
        "counter": {"type": "workflow", "source": "examples.counter:workflow"},
        "sleepy": {"type": "workflow", "source": "tests.fixtures_workflows:slow", "timeout": 0.3},
        "approval": {
            "type": "workflow",
            "source": "examples.approval:workflow",
            "human_service": "approvers",
        },
        "approvers": {"type": "human", "human_input_prompt": "Approval needed: {input_str}"},
        "calculator": {"type": "tool", "source": "examples.tools:tools"},
        "assistant": {
            "type": "agent",
            "source": "examples.agent:build_agent",
            "tools": ["calculator"],
        },
    },
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = {"CLI_TEST_TOKENS": TOKEN}
    with running_server(CONFIG, tmp_path_factory.mktemp("cli"), env=env) as running:
        yield running


def cli_env(server=None, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AGENT_GATEWAY_TOKEN": TOKEN, **extra}
    if server is not None:
        env["AGENT_GATEWAY_URL"] = server.base_url
    return env


def agw(server, *args: str, **env: str) -> Result:
    """The command, piped (stdout is not a terminal), run in-process by click's runner."""
    env = {"AGENT_GATEWAY_TOKEN": TOKEN, **env}
    if server is not None:
        env["AGENT_GATEWAY_URL"] = server.base_url
    return CliRunner().invoke(cli, list(args), env=env, prog_name="agent-gateway")


def _as_at_a_terminal() -> None:
    """Ctrl-C must work as at a terminal even when the suite runs where SIGINT is ignored (a
    shell's background job): an ignored SIGINT is inherited, and Python then never raises
    KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def terminal(server, *args: str) -> pexpect.spawn:
    """The command in a pseudo-terminal, as typed by a person."""
    return pexpect.spawn(
        sys.executable,
        ["-m", "gateway.cli", *args],
        cwd=str(ROOT),
        env=cli_env(server),
        encoding="utf-8",
        timeout=20,
        dimensions=(40, 160),
        preexec_fn=_as_at_a_terminal,
    )


def ended(child: pexpect.spawn) -> int:
    child.expect(pexpect.EOF)
    child.close()
    if child.exitstatus:
        print(f"the command's last output:\n{child.before}")
    return child.exitstatus


def client(server) -> GatewayClient:
    return GatewayClient(server.base_url, TOKEN)


def test_the_console_script_is_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["agent-gateway"] == "gateway.cli:main"


# -- run ----------------------------------------------------------------------------------------
def test_run_follow_in_a_terminal_shows_events_then_the_result(server) -> None:
    child = terminal(server, "run", "assistant", "What is 2*(1+1)?")
    child.expect("running")
    child.expect(r"→ add\(a=1, b=1\)")  # tool calls as they happen
    child.expect(r"← add\(a=1, b=1\) = 2")
    child.expect(r"→ multiply\(a=2, b=2\)")
    child.expect("The answer is 4.")
    assert ended(child) == 0


def test_run_piped_prints_json_and_exits_with_the_tasks_ending(server) -> None:
    done = agw(server, "run", "stats", "numbers=[1, 2, 3]")
    assert done.exit_code == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["status"] == "completed"

    failed = agw(server, "run", "stats", "--json", '{"numbers": []}')
    assert failed.exit_code == 1
    assert "non-empty" in json.loads(failed.stdout)["error"]

    timed_out = agw(server, "run", "sleepy", "seconds=5")
    assert timed_out.exit_code == 3 and json.loads(timed_out.stdout)["status"] == "timed_out"

    followed = agw(server, "run", "stats", "numbers=[4]", "--follow")  # events as JSON lines
    lines = [json.loads(line) for line in followed.stdout.splitlines()]
    assert [e["kind"] for e in lines][0] == "status" and lines[-1]["kind"] == "result"


def test_ctrl_c_asks_to_cancel_or_detach(server) -> None:
    child = terminal(server, "run", "approval", "request=deploy")
    child.expect("Approve deploy")
    child.sendintr()
    child.expect(r"\[c\]ancel it or \[d\]etach")
    child.sendline("c")
    child.expect("cancelled")
    assert ended(child) == 4

    child = terminal(server, "run", "approval", "request=later")
    child.expect("Approve later")
    child.sendintr()
    child.expect(r"\[d\]etach")
    child.sendline("d")
    child.expect(r"agent-gateway task (\S+) --events")
    task_id = child.match.group(1)
    assert ended(child) == 0
    with client(server) as gw:
        assert gw.task(task_id)["status"] == "waiting_for_human"  # still running
        gw.cancel(task_id)


# -- people -------------------------------------------------------------------------------------
def test_human_inbox_answers_the_approval_and_the_workflow_completes(server) -> None:
    with client(server) as gw:
        first = gw.submit("approval", request="deploy v2")
        child = terminal(server, "human", "inbox", "approvers")
        child.expect("Approval needed: Approve deploy v2")
        child.expect("answer:")
        child.sendline("yes")
        child.expect("answered")
        assert first.result(timeout=10) == {
            "request": "deploy v2",
            "approved": True,
            "answer": "yes",
        }
        # nothing waits now: the inbox blocks on the gateway's event feed until a question comes
        child.expect("waiting for questions")
        second = gw.submit("approval", request="drop the table")
        child.expect("Approval needed: Approve drop the table")
        child.expect("answer:")
        child.sendline("no")
        child.expect("answered")
        assert second.result(timeout=10)["approved"] is False
        child.expect("waiting for questions")
        child.sendintr()
        assert ended(child) == 0


def test_human_list_and_answer(server) -> None:
    with client(server) as gw:
        task = gw.submit("approval", request="rollback")
        next(e for e in task.events() if e.name == "InputRequiredEvent")
        listed = json.loads(agw(server, "human", "list").stdout)
        question = next(q for q in listed if "rollback" in q["prompt"])
        answered = agw(server, "human", "answer", question["task_id"], "no")
        assert answered.exit_code == 0, answered.stderr
        assert task.result(timeout=10)["approved"] is False
        again = agw(server, "human", "answer", question["task_id"], "yes")
        assert again.exit_code != 0 and again.stderr.count("\n") == 1


# -- inspect --------------------------------------------------------------------------------------
def test_tasks_task_cancel_sessions_services(server) -> None:
    ran = json.loads(agw(server, "run", "echo", "message=hello").stdout)
    task_id = ran["task_id"]

    listed = json.loads(agw(server, "tasks", "--service", "echo").stdout)
    rows = listed.get("items") or listed.get("tasks")
    assert task_id in [t["task_id"] for t in rows]
    table = agw(server, "tasks", "--output", "table")
    assert task_id in table.stdout and "completed" in table.stdout

    shown = agw(server, "task", task_id, "--output", "table")
    assert "hello" in shown.stdout and "completed" in shown.stdout
    events = agw(server, "task", task_id, "--events")
    assert json.loads(events.stdout.splitlines()[-1])["kind"] == "result"

    with client(server) as gw:
        waiting = gw.submit("approval", request="cancel me")
    cancelled = agw(server, "cancel", waiting.task_id)
    assert json.loads(cancelled.stdout)["status"] == "cancelled"
    again = agw(server, "cancel", waiting.task_id)
    assert again.exit_code == 2 and again.stderr.startswith("error: ")

    session_id = agw(server, "sessions", "new", "--output", "table").stdout.strip()
    agw(server, "run", "echo", "message=in a session", "--session", session_id)
    shown = json.loads(agw(server, "sessions", "show", session_id).stdout)
    assert len(shown["task_ids"]) == 1
    assert session_id in agw(server, "sessions", "list", "--output", "table").stdout
    assert agw(server, "sessions", "delete", session_id).exit_code == 0
    assert agw(server, "sessions", "show", session_id).exit_code == 2

    services = json.loads(agw(server, "services").stdout)
    assert services["approvers"]["type"] == "human"


# -- errors: one line, the right code -------------------------------------------------------------
def one_line_error(result: Result, code: int, *words: str) -> None:
    assert result.exit_code == code, (result.exit_code, result.stderr)
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr


def test_errors_are_one_line_with_the_right_exit_code(server) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    one_line_error(agw(server, "--url", nobody, "services"), 1, "cannot reach", "refused")
    one_line_error(
        agw(server, "services", AGENT_GATEWAY_TOKEN="wrong"), 1, "401", "refused the token"
    )
    one_line_error(agw(server, "services", AGENT_GATEWAY_TOKEN=""), 1, "401", "--token")
    one_line_error(agw(server, "run", "nope"), 2, "'nope'", "services: approval, approvers")
    one_line_error(agw(server, "task", "no-such-task"), 2, "no-such-task")
    usage = agw(server, "run", "echo", "--json", "[1]")
    assert usage.exit_code == 2 and "JSON object" in usage.stderr


# -- server side ----------------------------------------------------------------------------------
def test_check_lists_services_and_routes_or_fails_in_one_line(tmp_path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"services": CONFIG["services"]}))
    checked = agw(None, "check", "--config", str(good), "--output", "table")
    assert checked.exit_code == 0, checked.stderr
    assert "POST   /services/approvers/tasks/{task_id}/handle" in checked.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"services": {"x": {"type": "workflow", "source": "nope:wf"}}}))
    one_line_error(agw(None, "check", "--config", str(bad)), 2, "bad.yaml", "'x'")


def test_serve_reload_restarts_when_the_config_changes(tmp_path) -> None:
    (tmp_path / "mywf.py").write_text(
        "from examples.echo import workflow\n"  # the source module's folder is watched too
    )
    config = tmp_path / "gw.yaml"
    config.write_text(
        yaml.safe_dump({"services": {"one": {"type": "workflow", "source": "mywf:workflow"}}})
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--reload",
            "--config",
            str(config),
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert set(_services_when_up(url, lambda s: "one" in s)) == {"one"}
        config.write_text(
            yaml.safe_dump(
                {
                    "services": {
                        "one": {"type": "workflow", "source": "mywf:workflow"},
                        "two": {"type": "workflow", "source": "mywf:workflow"},
                    }
                }
            )
        )
        assert set(_services_when_up(url, lambda s: "two" in s)) == {"one", "two"}
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=20)


def _services_when_up(url: str, ready, timeout: float = 30.0) -> dict:
    """Wait (bounded) for the reloaded server to serve what `ready` looks for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = httpx.get(url + "/control_plane/services", timeout=1).json()
            if ready(found):
                return found
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not serve the expected services in {timeout}s")


def test_the_readme_client_example_runs_as_written(server, monkeypatch, capsys) -> None:
    text = (ROOT / "README.md").read_text()
    example = next(
        b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "GatewayClient()" in b
    )
    monkeypatch.setenv("AGENT_GATEWAY_URL", server.base_url)
    monkeypatch.setenv("AGENT_GATEWAY_TOKEN", TOKEN)
    exec(compile(example, "README.md", "exec"), {})
    assert "non-empty" in capsys.readouterr().out
