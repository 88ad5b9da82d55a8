"""The Python client drives every service type of the demo over HTTP: a workflow, a component,
an agent (text input), a tool (one call, and a tool task), a person (pending and answer), and
task listing, events and session deletion."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.client import GatewayClient, NotFound
from tests.conftest import ROOT, running_server


def test_the_client_calls_every_service_type(tmp_path: Path) -> None:
    demo = yaml.safe_load((ROOT / "config.yaml").read_text())
    with running_server(demo, tmp_path) as server, GatewayClient(server.base_url) as client:
        assert client.run("echo", message="hi") == "hi"
        assert client.run("wordstats", text="a b a", top=1)["words"] == 3
        assert client.run("assistant", input="What is (3+4)*5?") == "The answer is 35."
        assert client.run("assistant", "What is 2+3?") == "The answer is 5."
        assert client.tool("calculator", "multiply", a=6, b=7)["raw_output"] == 42
        assert client.run("calculator", tool="add", kwargs={"a": 1, "b": 2}) == 3

        approval = client.submit("approval", request="ship it")
        next(e for e in approval.events() if e.name == "InputRequiredEvent")
        [question] = client.human.pending()
        client.human.answer(question["task_id"], "yes")
        assert approval.result(timeout=10)["approved"] is True

        page = client.tasks(service="echo")
        assert page["total"] == 1 and page["items"][0]["input"] == {"message": "hi"}
        kinds = [e.kind for e in client.events(page["items"][0]["task_id"])]
        assert kinds[-1] == "result"

        session = client.sessions.create()
        assert client.run("counter", session_id=session)["turns"] == 1
        client.sessions.delete(session)
        with pytest.raises(NotFound):
            client.sessions.get(session)
