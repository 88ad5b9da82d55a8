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
from pathlib import Path

logger = logging.getLogger("gateway.store.signing")

SECRET_ENV = "GATEWAY_SECRET"


class SignatureError(ValueError):
    """Stored state whose signature does not verify: it is refused, never loaded."""


def load_secret(
    env: dict[str, str] | None = None, key_file: Path | None = None
) -> tuple[bytes, bool]:
    """The signing key and whether it is persistent, and a log line saying where it came from.

    `GATEWAY_SECRET` first; else `key_file` (a durable store's key, beside its database):
    read if it exists, created once with 32 random bytes and mode 0600 if not; else a random
    key for this process only.
    """
    value = (env if env is not None else os.environ).get(SECRET_ENV, "")
    if value:
        logger.info("signing saved state with the key from %s", SECRET_ENV)
        return value.encode("utf-8"), True
    if key_file is not None:
        return _key_from_file(key_file), True
    logger.warning(
        "%s is not set: using a random key, so saved workflow state will not survive a restart",
        SECRET_ENV,
    )
    return secrets.token_bytes(32), False


def _key_from_file(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_text(encoding="ascii").strip()
        if not key:
            raise ValueError(f"{path} is empty; delete it to have a new key made") from None
        logger.info("signing saved state with the key in %s (%s is not set)", path, SECRET_ENV)
        return key.encode("utf-8")
    key = secrets.token_hex(32)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(key + "\n")
    logger.warning(
        "%s is not set: created a signing key in %s (mode 0600); keep it with the database",
        SECRET_ENV,
        path,
    )
    return key.encode("utf-8")


def verify_saved(
    key: bytes, payload: str, signature: str | None, session_id: str, service: str
) -> None:
    """`verify` for a session's saved state, whose refusal says why and what to do."""
    try:
        verify(key, payload, signature)
    except SignatureError:
        raise SignatureError(
            f"session {session_id!r}: the saved state of {service!r} failed its HMAC-SHA256 "
            f"check (signed with another key: did {SECRET_ENV} or the key file beside the "
            "database change?), so it was not loaded; POST "
            f"/control_plane/sessions/{session_id}/reset forgets it and the session starts afresh"
        ) from None


def sign(key: bytes, payload: str) -> str:
    return hmac.new(key, payload.encode("utf-8"), hashlib.sha256).hexdigest()


def verify(key: bytes, payload: str, signature: str | None) -> None:
    if not signature or not hmac.compare_digest(sign(key, payload), signature):
        raise SignatureError("stored state failed its HMAC-SHA256 check; refusing to load it")
