"""Retention of finished tasks in the SQLite file, so it does not grow forever.

The policy keeps finished tasks (completed, failed, cancelled, timed out) no older than
`max_age` seconds and at most `max_tasks` of them, newest first. Tasks that have not finished
(pending, running, waiting for a person) are never touched, nor are sessions and their saved
contexts (they go when the session is deleted). A sweep deletes the oldest ones past the policy
in small transactions (`batch` rows each), then hands the freed pages back to the file system
with `PRAGMA incremental_vacuum`, a bounded number of pages per step; each step runs in the
store's worker thread between the writer's commits, so neither the event loop nor the writer
waits long.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

DAY = 86_400.0
VACUUM_PAGES = 256  # pages returned to the file system per step (1 MB with 4 KB pages)


@dataclass(frozen=True)
class Retention:
    """None for `max_age` or `max_tasks` turns that limit off (both None: keep everything)."""

    max_age: float | None = 7 * DAY
    max_tasks: int | None = 100_000
    sweep_every: float = 60.0
    batch: int = 500

    @property
    def active(self) -> bool:
        return self.max_age is not None or self.max_tasks is not None


def delete_expired(conn: sqlite3.Connection, policy: Retention, now: float) -> list[tuple]:
    """Delete up to `policy.batch` of the oldest finished tasks past the policy, in one
    transaction; returns their (task_id, session_id) rows."""
    due = 0
    if policy.max_age is not None:
        (due,) = conn.execute(
            "SELECT count(*) FROM tasks WHERE finished_at IS NOT NULL AND finished_at < ?",
            (now - policy.max_age,),
        ).fetchone()
    if policy.max_tasks is not None:
        (finished,) = conn.execute(
            "SELECT count(*) FROM tasks WHERE finished_at IS NOT NULL"
        ).fetchone()
        due = max(due, finished - policy.max_tasks)
    due = min(due, policy.batch)
    if due <= 0:
        return []
    conn.execute("BEGIN IMMEDIATE")
    try:
        victims = conn.execute(
            "SELECT task_id, json_extract(body, '$.session_id') FROM tasks "
            "WHERE finished_at IS NOT NULL ORDER BY finished_at LIMIT ?",
            (due,),
        ).fetchall()
        conn.executemany("DELETE FROM tasks WHERE task_id = ?", [(v[0],) for v in victims])
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return victims


def reclaim_step(conn: sqlite3.Connection) -> bool:
    """Give up to VACUUM_PAGES free pages back to the file system; True if some may remain."""
    (free,) = conn.execute("PRAGMA freelist_count").fetchone()
    if not free:
        return False
    conn.execute(f"PRAGMA incremental_vacuum({VACUUM_PAGES})").fetchall()
    return free > VACUUM_PAGES
