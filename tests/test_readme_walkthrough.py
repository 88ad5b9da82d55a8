"""Every command of the README's walk-through runs, in order as written, against a real server.

The bash blocks of "Walk-through with curl" are joined into one script and run by bash against
`uvicorn gateway.app:app` serving the demo's own `config.yaml` (its database in a temporary
folder). A command that hangs (an event stream that never ends) fails the test by its timeout;
a command that fails stops the script (`set -e`, `pipefail`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.conftest import ROOT, running_server

README = ROOT / "README.md"


def walkthrough_blocks() -> list[str]:
    text = README.read_text()
    start = text.index("## Walk-through with curl")
    end = text.index("\n## ", start + 1)
    return re.findall(r"```bash\n(.*?)```", text[start:end], flags=re.S)


def test_the_example_workflow_in_the_readme_is_the_served_file() -> None:
    text = README.read_text()
    code = (ROOT / "examples" / "greeting.py").read_text()
    assert f"```python\n{code}```" in text


def test_every_walkthrough_command_runs_in_order(tmp_path: Path) -> None:
    assert shutil.which("jq"), "the walk-through uses jq: apt-get install jq"
    blocks = walkthrough_blocks()
    assert len(blocks) >= 6
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    with running_server(config, tmp_path) as server:
        host = server.base_url.removeprefix("http://")
        script = "\n".join(blocks).replace("localhost:8000", host)
        assert "localhost" not in script
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
    out = done.stdout
    assert done.returncode == 0, (done.returncode, out[-3000:], done.stderr[-3000:])
    # what the README's comments promise
    assert '"result":"hello"' in out
    assert "`numbers` must be a non-empty list" in out
    assert '{"greeting":"Hello, Ada!","shouted":"HELLO, ADA!"}' in out
    assert '"name":"Greeted"' in out
    assert '{"turns":3' in out.replace(" ", "")
    assert '"raw_output":42' in out
    assert "The answer is 35." in out and "The answer is 50." in out
    assert '{"running":false}' in out
    assert "event: result" in out and "ToolCallResult" in out
    assert '{"request":"deploy v2 to production","approved":true,"answer":"yes"}' in out
    assert '"words":6' in out
