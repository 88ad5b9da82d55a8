"""Service tokens for tests that act as a remote service (register, post to /process_message).

Importing this module puts the token in the environment, so in-process gateways and uvicorn
subprocesses started afterwards both read it through `remote_services.tokens_env`.
"""

from __future__ import annotations

import os
from typing import Any

SERVICE_TOKEN = "service-token-for-tests"
TOKENS_ENV = "GATEWAY_TEST_SERVICE_TOKENS"
os.environ[TOKENS_ENV] = SERVICE_TOKEN

REMOTE = {"remote_services": {"tokens_env": TOKENS_ENV}}
SERVICE_AUTH = {"Authorization": f"Bearer {SERVICE_TOKEN}"}


def with_remote(config: dict[str, Any]) -> dict[str, Any]:
    """`config` with remote services on (loopback only, the default allow list)."""
    return {**config, **REMOTE}
