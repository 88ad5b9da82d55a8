"""HMAC-SHA256 signatures for state that leaves memory (saved workflow contexts).

The key comes from `GATEWAY_SECRET`; without it a random per-process key is used, which means
saved state cannot be verified (and so is not trusted) after a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets

logger = logging.getLogger("gateway.store.signing")

SECRET_ENV = "GATEWAY_SECRET"


class SignatureError(ValueError):
    """Stored state whose signature does not verify: it is refused, never loaded."""


def load_secret(env: dict[str, str] | None = None) -> tuple[bytes, bool]:
    """The signing key and whether it is persistent (came from the environment)."""
    value = (env if env is not None else os.environ).get(SECRET_ENV, "")
    if value:
        return value.encode("utf-8"), True
    logger.warning(
        "%s is not set: using a random key, so saved workflow state will not survive a restart",
        SECRET_ENV,
    )
    return secrets.token_bytes(32), False


def sign(key: bytes, payload: str) -> str:
    return hmac.new(key, payload.encode("utf-8"), hashlib.sha256).hexdigest()


def verify(key: bytes, payload: str, signature: str | None) -> None:
    if not signature or not hmac.compare_digest(sign(key, payload), signature):
        raise SignatureError("stored state failed its HMAC-SHA256 check; refusing to load it")
