"""Redis store: the shared source of truth when several gateway processes form one deployment.

Task records are hashes; the two transitions that must never race between replicas are Lua
scripts, each one atomic on the server:

- `submit`: refuse a taken id or a full backlog, write the record and its first event, append the
  task to its session lane, and add the stream entry only if the task heads its lane — so a 202
  always has both a record and (now or when its lane frees) a stream entry. When the accepting
  replica hosts the service and has room, the same script also reads the next entry for it
  (XREADGROUP, usually the one just added): the task starts there without a blocking read's
  wake-up and another round trip, and is still an ordinary pending entry if that replica dies.
- `finish`: the first terminal state wins; it stores the outcome, acknowledges and deletes the
  stream entry, hands the lane to the next task, and notifies the replicas watching the task.
  Later attempts (a duplicate delivery, a late result after a cancel) answer "ended" and change
  nothing.

Notifications are targeted, never broadcast: a replica that waits for a task it does not run
(a long-poll, `/run` of a task another replica took, an SSE reader) registers in the task's
`watch` set (the `watch` script, atomically with reading the record), and the scripts that
change the task PUBLISH only to those replicas' `note:<replica>` channels. A task accepted and
run by the same replica, the common case, thus costs no notification at all, and the other
replicas of a deployment do no work for it.

Sessions are JSON strings plus a list of task ids; signed contexts are one hash per session.
Context and session writes are recorded at once (the `Store` contract) and written by `flush()`,
which the control plane awaits before a task's terminal transition, so the next task of a
session, wherever it runs, finds the context the previous one saved.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup
from pydantic_core import to_json
from redis.exceptions import NoScriptError

from gateway.control_plane.sessions import SessionRecord
from gateway.control_plane.tasks import TaskRecord, shown_result
from gateway.messages import QueueMessage, TaskEvent, TaskResult, TaskStatus, new_id
from gateway.store import Store, TaskFilter
from gateway.store.redis_lua import (
    EVENT,
    EVENTS_TTL,
    FEED,
    FINISH,
    FINISHED_TTL,
    LIST_TASKS,
    STATUS,
    SUBMIT,
    TERMINAL,
    WATCH,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

logger = logging.getLogger("gateway.store.redis")

CONTEXT_CACHE_SIZE = 4096
FEED_MAXLEN = 1024  # entries the aggregate feed stream keeps (about; trimmed with MAXLEN ~)


class SubmitRefused(Exception):
    """The submit script said no: `reason` is `exists`, `full` or `nosession`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Submitted:
    """What the submit script did: `outcome` is `ok` or `queued` (behind its session lane).
    `taken` is the entry handed to the submitting replica's consumer, if it asked for one, with
    `raw` its message unless it is the task's own entry."""

    outcome: str
    taken: str | None = None
    raw: str | None = None
    running: bool = False  # recorded running by the script (the taker starts it at once)


class RedisStore(Store):
    """Tasks, sessions and contexts in Redis, shared by every replica of a deployment."""

    durable = True

    def __init__(
        self,
        client: Redis,
        namespace: str,
        replay_size: int = 256,
        feed_size: int = FEED_MAXLEN,
    ) -> None:
        self.client = client
        self.prefix = f"gw:{namespace}:"
        self.replay_size = max(1, replay_size)
        self.feed_size = max(1, feed_size)
        self._submit = client.register_script(SUBMIT)
        self._finish = client.register_script(FINISH)
        self._status = client.register_script(STATUS)
        self._event = client.register_script(EVENT)
        self._watch = client.register_script(WATCH)
        self._feed = client.register_script(FEED)
        self._list_tasks = client.register_script(LIST_TASKS)
        self._contexts: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._pending_contexts: dict[tuple[str, str], str | None] = {}  # None: delete it
        self._pending_sessions: dict[str, SessionRecord | None] = {}
        self._flush_lock = anyio.Lock()
        self._dirty = anyio.Event()

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    # -- lifecycle ---------------------------------------------------------------------------
    async def open(self, task_group: TaskGroup) -> None:
        task_group.start_soon(self._writer, name="redis-store-writer")

    async def close(self) -> None:
        with anyio.move_on_after(5):
            try:
                await self.flush()
            except Exception:
                logger.warning("unsaved session/context changes lost at shutdown (Redis down)")

    async def _writer(self) -> None:
        """Write recorded changes soon after they are recorded (a flush may come first)."""
        while True:
            await self._dirty.wait()
            self._dirty = anyio.Event()
            try:
                await self.flush()
            except Exception as exc:  # Redis away: keep the changes, try again on the next one
                logger.warning("could not write session/context changes: %s", exc)

    async def flush(self) -> None:
        """Write every recorded session/context change, in order, before returning."""
        if (
            not self._pending_contexts
            and not self._pending_sessions
            and not self._flush_lock.locked()
        ):
            return  # nothing recorded, nothing being written: no lock, no yield to the loop
        async with self._flush_lock:
            if not self._pending_contexts and not self._pending_sessions:
                return
            contexts, self._pending_contexts = self._pending_contexts, {}
            sessions, self._pending_sessions = self._pending_sessions, {}
            try:
                async with self.client.pipeline(transaction=True) as pipe:
                    for (sid, service), payload in contexts.items():
                        if payload is None:
                            pipe.hdel(self.key("ctx", sid), service)
                        else:
                            pipe.hset(self.key("ctx", sid), service, payload)
                    for sid, record in sessions.items():
                        if record is None:
                            pipe.delete(
                                self.key("session", sid),
                                self.key("session", sid, "tasks"),
                                self.key("ctx", sid),
                            )
                            pipe.zrem(self.key("sessions"), sid)
                        else:
                            body = record.model_dump_json(include={"state", "created_at"})
                            pipe.set(self.key("session", sid), body)
                            pipe.zadd(self.key("sessions"), {sid: record.created_at}, nx=True)
                    await pipe.execute()
            except BaseException:
                # Put them back under anything recorded since (newer values win).
                self._pending_contexts = {**contexts, **self._pending_contexts}
                self._pending_sessions = {**sessions, **self._pending_sessions}
                raise

    # -- sessions and contexts (the Store contract: record now, write soon) ------------------
    def save_session(self, record: SessionRecord, payload: str | None = None) -> None:
        self._pending_sessions[record.session_id] = record
        self._dirty.set()

    def delete_session(self, session_id: str) -> None:
        self._pending_sessions[session_id] = None
        for key in [k for k in self._contexts if k[0] == session_id]:
            del self._contexts[key]
        for key in [k for k in self._pending_contexts if k[0] == session_id]:
            del self._pending_contexts[key]
        self._dirty.set()

    def save_context(self, session_id: str, service: str, payload: str) -> None:
        self._pending_contexts[(session_id, service)] = payload
        self._remember_context((session_id, service), payload)
        self._dirty.set()

    def delete_context(self, session_id: str, service: str) -> None:
        self._contexts.pop((session_id, service), None)
        self._pending_contexts[(session_id, service)] = None
        self._dirty.set()

    def forget_cached(self, session_id: str) -> None:
        """Another replica deleted or reset this session: drop what is cached of it here."""
        for key in [k for k in self._contexts if k[0] == session_id]:
            del self._contexts[key]

    def load_context(self, session_id: str, service: str) -> str | None:
        """From the cache `prefetch_session` filled when the task was received."""
        return self._contexts.get((session_id, service))

    def _remember_context(self, key: tuple[str, str], payload: str) -> None:
        self._contexts[key] = payload
        self._contexts.move_to_end(key)
        while len(self._contexts) > CONTEXT_CACHE_SIZE:
            self._contexts.popitem(last=False)

    async def create_session(self, record: SessionRecord) -> None:
        body = record.model_dump_json(include={"state", "created_at"})
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(self.key("session", record.session_id), body)
            pipe.zadd(self.key("sessions"), {record.session_id: record.created_at})
            await pipe.execute()

    async def list_sessions(
        self, descending: bool, offset: int, limit: int, after: tuple[float, str] | None = None
    ) -> tuple[list[SessionRecord], int]:
        """A page of every session of the deployment (ordered by creation, then id) and how
        many there are; `after` is a cursor position (created_at, session_id)."""
        index = self.key("sessions")
        start = offset
        if after is not None:
            start += await self._position_after(index, after, descending)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.zcard(index)
            pipe.zrange(index, start, start + limit - 1, desc=descending)
            total, ids = await pipe.execute()
        if not ids:
            return [], total
        async with self.client.pipeline(transaction=False) as pipe:
            for sid in ids:
                pipe.get(self.key("session", sid))
                pipe.lrange(self.key("session", sid, "tasks"), 0, -1)
            replies = await pipe.execute()
        records = []
        for sid, body, task_ids in zip(ids, replies[::2], replies[1::2], strict=True):
            if body is not None:  # deleted meanwhile
                records.append(SessionRecord(session_id=sid, task_ids=task_ids, **json.loads(body)))
        return records, total

    async def _position_after(self, index: str, after: tuple[float, str], desc: bool) -> int:
        """How many members of `index` sort before-or-at cursor (score, id) in this order."""
        score, ident = after
        held = await self.client.zscore(index, ident)
        if held is not None and held == score:
            rank = await (self.client.zrevrank if desc else self.client.zrank)(index, ident)
            if rank is not None:
                return rank + 1
        ties = await self.client.zrangebyscore(index, score, score)
        if desc:
            before = await self.client.zcount(index, f"({score!r}", "+inf")
            return before + sum(1 for m in ties if m > ident)
        before = await self.client.zcount(index, "-inf", f"({score!r}")
        return before + sum(1 for m in ties if m < ident)

    async def fetch_session(self, session_id: str) -> SessionRecord | None:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.get(self.key("session", session_id))
            pipe.lrange(self.key("session", session_id, "tasks"), 0, -1)
            body, task_ids = await pipe.execute()
        if body is None:
            return None
        fields = json.loads(body)
        return SessionRecord(session_id=session_id, task_ids=task_ids, **fields)

    async def prefetch_contexts(self, session_id: str) -> None:
        """Load a session's saved contexts into the cache before one of its tasks runs here."""
        saved = await self.client.hgetall(self.key("ctx", session_id))
        self.forget_cached(session_id)  # Redis is the truth: a reset elsewhere drops them
        for service, payload in saved.items():
            self._remember_context((session_id, service), payload)

    # -- tasks -------------------------------------------------------------------------------
    async def submit(
        self,
        record: TaskRecord,
        message: QueueMessage,
        max_queued: int,
        event: TaskEvent,
        take_as: str = "",
        starts_at: float | None = None,
    ) -> Submitted:
        """Run the submit script; raises SubmitRefused unless the task was accepted. With
        `take_as` (a consumer name) the script also reads the next entry for that consumer;
        with `starts_at` too, a task so taken is recorded running from then."""
        running = ""
        if starts_at is not None:
            event = TaskEvent(
                task_id=record.task_id, kind="status", status=TaskStatus.RUNNING, at=starts_at
            )
            running = event.model_dump_json()
        outcome = await self._submit(
            args=[
                self.prefix,
                record.task_id,
                record.service,
                record.session_id or "",
                max_queued,
                message.model_dump_json(),
                event.model_dump_json(),
                repr(record.created_at),
                json.dumps(record.input),  # kept as sent: text or a JSON value
                EVENTS_TTL,
                json.dumps(record.trace) if record.trace else "",  # its trace, with tracing on
                take_as,
                self.feed_size,
                repr(record.created_at - FINISHED_TTL),  # finished before this: past retention
                repr(record.created_at - FINISHED_TTL - EVENTS_TTL),  # records surely gone
                repr(starts_at) if starts_at is not None else "",
                running,
            ]
        )
        if isinstance(outcome, list):
            raw = outcome[2] or None if len(outcome) > 2 else None
            return Submitted("ok", outcome[1], raw, running=len(outcome) > 3)
        if outcome not in ("ok", "queued"):
            raise SubmitRefused(outcome)
        return Submitted(outcome)

    async def finish(
        self,
        task_id: str,
        status: TaskStatus,
        result: TaskResult | None,
        error: str | None,
        finished_at: float,
    ) -> TaskRecord | None:
        """The terminal transition: the ended record if this call ended the task, else None.

        Its `result` event is written here, as one process writes it (ControlPlane._result_event):
        `data.result` is what the task shows as its result, not the whole TaskResult."""
        result_json = result.model_dump_json() if result is not None else ""
        shown = shown_result(status, result)
        event = (
            f'{{"task_id":{json.dumps(task_id)},"kind":"result","name":"","data":'
            f'{{"status":"{status.value}","result":{to_json(shown, inf_nan_mode="null").decode()},'
            f'"error":{json.dumps(error)}}},"status":"{status.value}","at":{finished_at!r},'
            '"seq":null}'
        )
        reply = await self._finish(
            args=[
                self.prefix,
                task_id,
                status.value,
                result_json,
                error or "",
                repr(finished_at),
                event,
                FINISHED_TTL,
                TERMINAL,
                self.feed_size,
            ]
        )
        if not isinstance(reply, list):  # "ended" (the first terminal state stands), "unknown"
            return None
        service, session_id, sent, created_at, started_at, seq, trace = reply
        headers = json.loads(trace) if trace else None
        return TaskRecord(
            task_id=task_id,
            service=service,
            session_id=session_id or None,
            input=_sent_input(sent or ""),
            status=status,
            result=result,
            error=error,
            created_at=float(created_at or 0.0),
            started_at=float(started_at) if started_at else None,
            finished_at=finished_at,
            last_seq=int(seq or 0),
            trace=headers,
            trace_id=trace_id_of(headers),
        )

    async def write_events(self, events: list[TaskEvent]) -> None:
        """Progress of running tasks, in order, in one round trip: status changes move a task
        that has not ended; other events join its stream. Nothing is written after the end."""
        calls: list[tuple[AsyncScript, list[Any]]] = []
        for event in events:
            raw = event.model_dump_json()
            if event.kind == "status" and event.status is not None:
                args = [self.prefix, event.task_id, event.status.value, repr(event.at), raw]
                calls.append((self._status, [*args, TERMINAL, self.replay_size, self.feed_size]))
            else:
                args = [self.prefix, event.task_id, raw, self.replay_size, TERMINAL]
                calls.append((self._event, args))
        if len(calls) == 1:  # the common case: no pipeline to set up
            script, args = calls[0]
            await script(args=args)
            return
        await self._run_scripts(calls)

    async def _run_scripts(self, calls: list[tuple[AsyncScript, list[Any]]]) -> None:
        """Scripts in one pipelined round trip, by EVALSHA. (A pipeline given `Script` objects
        asks SCRIPT EXISTS first, on every execution: a second round trip.) Scripts the server
        does not have (it restarted) are loaded and only those calls are sent again."""
        async with self.client.pipeline(transaction=False) as pipe:
            for script, args in calls:
                pipe.evalsha(script.sha, 0, *args)
            replies = await pipe.execute(raise_on_error=False)
        missing = [call for call, reply in zip(calls, replies, strict=True)
                   if isinstance(reply, NoScriptError)]  # fmt: skip
        for reply in replies:
            if isinstance(reply, Exception) and not isinstance(reply, NoScriptError):
                raise reply
        for script, args in missing:
            await script(args=args)  # loads the script, then runs it

    async def fetch_task(self, task_id: str) -> TaskRecord | None:
        fields = await self.client.hgetall(self.key("task", task_id))
        return _record(fields) if fields else None

    async def fetch_tasks(self, task_ids: list[str]) -> list[TaskRecord]:
        """The records of these tasks that still exist, in this order, in one round trip."""
        async with self.client.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hgetall(self.key("task", task_id))
            replies = await pipe.execute()
        return [_record(fields) for fields in replies if fields]

    async def remove_session(self, session_id: str) -> list[str]:
        """Delete a session at once, for every replica (no task can join it any more), and
        answer the ids of its tasks, read in the same transaction."""
        self.delete_session(session_id)  # drops cached and unwritten contexts
        self._pending_sessions.pop(session_id, None)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.lrange(self.key("session", session_id, "tasks"), 0, -1)
            pipe.delete(
                self.key("session", session_id),
                self.key("session", session_id, "tasks"),
                self.key("ctx", session_id),
            )
            pipe.zrem(self.key("sessions"), session_id)
            task_ids, *_ = await pipe.execute()
        return task_ids

    async def watch_task(self, task_id: str, replica: str) -> TaskRecord | None:
        """The task's record; if it has not ended, `replica` is notified (on its `note`
        channel) of its next events and of its end. Registering and reading are one atomic
        step, so an end cannot slip in between unseen."""
        fields = await self._watch(args=[self.prefix, task_id, replica, EVENTS_TTL, TERMINAL])
        if not fields:
            return None
        if isinstance(fields, list):
            fields = dict(zip(fields[::2], fields[1::2], strict=True))
        return _record(fields)

    async def list_tasks(self, query: TaskFilter) -> tuple[list[TaskRecord], int]:
        """A page of the deployment's tasks (every replica's) and how many match, from the
        indexes the scripts keep; the same order and cursor as in one process."""
        sort = {"created_at": "created", "started_at": "started", "finished_at": "finished"}
        filters = []
        if query.status is not None:
            filters.append(f"st:{query.status}")
        if query.service is not None:
            filters.append(f"svc:{query.service}")
        if query.session_id is not None:
            filters.append(f"sess:{query.session_id}")
        after_score, after_id = ("", "") if query.after is None else query.after
        reply = await self._list_tasks(
            args=[
                self.prefix,
                sort[query.sort],
                "1" if query.descending else "0",
                query.limit,
                query.offset,
                repr(float(after_score)) if query.after is not None else "",
                after_id,
                new_id(),  # its own temporary key for an intersection
                *filters,
            ]
        )
        total, pages = int(reply[0]), reply[1:]
        records = []
        for fields in pages:
            if fields:  # else it expired between the index read and now
                if isinstance(fields, list):
                    fields = dict(zip(fields[::2], fields[1::2], strict=True))
                records.append(_record(fields))
        return records, total

    async def append_feed(self, event: TaskEvent) -> None:
        """Add an entry that is not a task's status change (a human queue's) to the feed."""
        await self._feed(args=[self.prefix, event.model_dump_json(), self.feed_size])

    async def read_feed(self, after: int, count: int) -> list[tuple[int, TaskEvent]]:
        """Feed entries after position `after` (oldest first), as (position, event)."""
        entries = await self.client.xrange(self.key("feed"), min=f"({after}-0", count=count)
        return [feed_entry(entry_id, fields) for entry_id, fields in entries]

    async def feed_tail(self, count: int) -> list[tuple[int, TaskEvent]]:
        """The latest `count` feed entries, oldest first."""
        entries = await self.client.xrevrange(self.key("feed"), count=count)
        return [feed_entry(entry_id, fields) for entry_id, fields in reversed(entries)]

    async def task_status(self, task_id: str) -> str | None:
        return await self.client.hget(self.key("task", task_id), "status")

    async def read_events(self, task_id: str, after: str) -> list[tuple[str, TaskEvent]]:
        """Events after stream entry `after`, each with its `seq` (its SSE id) filled in."""
        entries = await self.client.xrange(self.key("ev", task_id), min=f"({after}", count=256)
        events = []
        for entry_id, fields in entries:
            event = TaskEvent.model_validate_json(fields["e"])
            events.append((entry_id, event.model_copy(update={"seq": int(fields["s"])})))
        return events


def feed_entry(entry_id: str, fields: dict[str, str]) -> tuple[int, TaskEvent]:
    """A feed stream entry as (position, event): a status change written by a script in
    compact fields, or any other event as JSON (`j`)."""
    position = int(entry_id.split("-", 1)[0])
    if "j" in fields:
        return position, TaskEvent.model_validate_json(fields["j"])
    event = TaskEvent(
        task_id=fields["t"],
        kind="status",
        status=TaskStatus(fields["s"]),
        at=float(fields["a"]),
        data={
            "service": fields["v"],
            "session_id": fields["x"] or None,
            "task_seq": int(fields["q"]),
        },
    )
    return position, event


def _sent_input(raw: str) -> Any:
    """The task's input as it was sent (stored as JSON; anything else is plain text)."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _record(fields: dict[str, Any]) -> TaskRecord:
    def number(name: str) -> float | None:
        value = fields.get(name)
        return float(value) if value else None

    result = fields.get("result")
    trace = json.loads(fields["trace"]) if fields.get("trace") else None
    return TaskRecord(
        task_id=fields["task_id"],
        service=fields["service"],
        session_id=fields.get("session_id") or None,
        input=_sent_input(fields.get("input", "")),
        status=TaskStatus(fields["status"]),
        result=TaskResult.model_validate_json(result) if result else None,
        error=fields.get("error") or None,
        created_at=number("created_at") or 0.0,
        started_at=number("started_at"),
        finished_at=number("finished_at"),
        last_seq=int(fields.get("seq") or 0),
        trace=trace,
        trace_id=trace_id_of(trace),
    )


def trace_id_of(trace: dict[str, str] | None) -> str | None:
    """The trace id inside a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`)."""
    parts = (trace or {}).get("traceparent", "").split("-")
    return parts[1] if len(parts) == 4 else None
