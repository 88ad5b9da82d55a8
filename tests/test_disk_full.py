"""A real server whose disk fills up refuses work instead of accepting and losing it.

The server child runs under a file-size limit (`RLIMIT_FSIZE`, with SIGXFSZ ignored so a write
past it fails with an error instead of killing the process): 120 submissions of 64 KB cannot all
fit. Every answer is either a 202 or a 503 saying the store cannot write; `/readyz` says 503.
Then the test gives the running server room again (raises its limit from outside with
`prlimit`): it recovers by itself, accepts work, and writes the results it had to hold back.
After a restart every task that got a 202 exists and is completed; every refused one is absent.
"""

from __future__ import annotations

import resource
import signal
import time
from pathlib import Path

import httpx

from tests.conftest import running_server
from tests.fixtures_sessions import config

LIMIT = 3_000_000  # bytes, per file the server writes
PAD = "x" * 65_536
CP = "/control_plane"


def _limit_file_size() -> None:
    """Runs in the server child before it starts."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, resource.RLIM_INFINITY))


def _until(predicate, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_full_disk_refuses_submissions_and_loses_no_accepted_task(tmp_path: Path) -> None:
    db = tmp_path / "full.db"
    cfg = config({"quick": {"source": "sleeper"}}, store={"kind": "sqlite", "path": str(db)})
    accepted: list[str] = []
    refused: list[str] = []

    with (
        running_server(cfg, tmp_path, preexec_fn=_limit_file_size) as server,
        httpx.Client(base_url=server.base_url, timeout=30) as http,
    ):
        for n in range(120):
            task_id = f"t{n}"
            body = {"service": "quick", "task_id": task_id, "input": {"pad": PAD}}
            answer = http.post(f"{CP}/tasks", json=body)
            if answer.status_code == 202:
                accepted.append(task_id)
                continue
            assert answer.status_code == 503, answer.text
            assert answer.headers["Retry-After"]
            assert "store cannot write" in answer.json()["detail"]
            refused.append(task_id)
        assert accepted and refused, (len(accepted), len(refused))
        assert http.get("/readyz").status_code == 503
        for task_id in refused[:5]:
            assert http.get(f"{CP}/tasks/{task_id}").status_code == 404
        failed = [
            line
            for line in http.get("/metrics").text.splitlines()
            if line.startswith("gateway_store_failed_commits_total")
        ]
        assert failed and float(failed[0].split()[1]) >= len(refused) / 10

        # room again: lift the child's limit from outside; the server notices on its own
        unlimited = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
        resource.prlimit(server.process.pid, resource.RLIMIT_FSIZE, unlimited)
        _until(lambda: http.get("/readyz").status_code == 200, "/readyz did not recover")
        late = http.post(f"{CP}/tasks", json={"service": "quick", "task_id": "late"})
        assert late.status_code == 202, late.text
        accepted.append("late")
        for task_id in accepted:
            answer = http.get(f"{CP}/tasks/{task_id}/result", params={"wait": 10}).json()
            assert answer["status"] == "completed", answer

    with (
        running_server(cfg, tmp_path) as server,
        httpx.Client(base_url=server.base_url, timeout=30) as http,
    ):
        for task_id in accepted:
            answer = http.get(f"{CP}/tasks/{task_id}")
            assert answer.status_code == 200, f"accepted {task_id} was lost"
            assert answer.json()["status"] == "completed", answer.json()
        for task_id in refused:
            assert http.get(f"{CP}/tasks/{task_id}").status_code == 404
