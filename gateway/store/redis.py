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
from redis.exceptions import NoScriptError

from gateway.control_plane.sessions import SessionRecord
from gateway.control_plane.tasks import TaskRecord
from gateway.messages import QueueMessage, TaskEvent, TaskResult, TaskStatus
from gateway.store import Store

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

logger = logging.getLogger("gateway.store.redis")

GROUP = "workers"  # one consumer group per service stream
FINISHED_TTL = 86_400  # seconds a finished task's record and events stay readable
EVENTS_TTL = 86_400  # bound on the event stream of a task that never ends
CONTEXT_CACHE_SIZE = 4096

_TERMINAL = "completed failed cancelled timed_out"

SUBMIT = """
local p, id, svc, sid = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local tkey = p .. 'task:' .. id
if redis.call('EXISTS', tkey) == 1 then return 'exists' end
local stream = p .. 'stream:' .. svc
if redis.call('XLEN', stream) >= tonumber(ARGV[5]) then return 'full' end
if sid ~= '' and redis.call('EXISTS', p .. 'session:' .. sid) == 0 then return 'nosession' end
redis.call('HSET', tkey, 'task_id', id, 'service', svc, 'session_id', sid, 'input', ARGV[9],
  'status', 'pending', 'created_at', ARGV[8], 'msg', ARGV[6], 'trace', ARGV[11])
local ekey = p .. 'ev:' .. id
redis.call('HSET', tkey, 'seq', 1)
redis.call('XADD', ekey, '*', 'e', ARGV[7], 's', 1)
redis.call('EXPIRE', ekey, ARGV[10])
redis.call('EXPIRE', tkey, ARGV[10])
if sid ~= '' then
  redis.call('RPUSH', p .. 'session:' .. sid .. ':tasks', id)
  if redis.call('RPUSH', p .. 'lane:' .. sid .. ':' .. svc, id) > 1 then return 'queued' end
end
local entry = redis.call('XADD', stream, '*', 'm', ARGV[6])
redis.call('HSET', tkey, 'entry', entry)
if ARGV[12] ~= '' then
  local got = redis.pcall('XREADGROUP', 'GROUP', 'workers', ARGV[12], 'COUNT', 1,
    'STREAMS', stream, '>')
  if type(got) == 'table' and got[1] then
    local e = got[1][2][1]
    if e[1] == entry then return {'ok', entry} end
    return {'ok', e[1], e[2][2]}
  end
end
return 'ok'
"""

FINISH = """
local p, id = ARGV[1], ARGV[2]
local tkey = p .. 'task:' .. id
local cur = redis.call('HGET', tkey, 'status')
if not cur then return 'unknown' end
if string.find(ARGV[9], cur, 1, true) then return 'ended' end
redis.call('HSET', tkey, 'status', ARGV[3], 'result', ARGV[4], 'error', ARGV[5],
  'finished_at', ARGV[6])
redis.call('HDEL', tkey, 'msg')
redis.call('EXPIRE', tkey, ARGV[8])
local svc = redis.call('HGET', tkey, 'service')
local stream = p .. 'stream:' .. svc
local entry = redis.call('HGET', tkey, 'entry')
if entry then
  redis.pcall('XACK', stream, 'workers', entry)
  redis.call('XDEL', stream, entry)
end
local ekey = p .. 'ev:' .. id
redis.call('XADD', ekey, '*', 'e', ARGV[7], 's', redis.call('HINCRBY', tkey, 'seq', 1))
redis.call('EXPIRE', ekey, ARGV[8])
local sid = redis.call('HGET', tkey, 'session_id')
if sid and sid ~= '' then
  local lane = p .. 'lane:' .. sid .. ':' .. svc
  if redis.call('LINDEX', lane, 0) == id then
    redis.call('LPOP', lane)
    while true do
      local nxt = redis.call('LINDEX', lane, 0)
      if not nxt then break end
      local nkey = p .. 'task:' .. nxt
      if redis.call('HGET', nkey, 'status') == 'pending' then
        local msg = redis.call('HGET', nkey, 'msg')
        redis.call('HSET', nkey, 'entry', redis.call('XADD', stream, '*', 'm', msg))
        break
      end
      redis.call('LPOP', lane)
    end
  else
    redis.call('LREM', lane, 1, id)
  end
end
local wkey = p .. 'watch:' .. id
for _, r in ipairs(redis.call('SMEMBERS', wkey)) do
  redis.call('PUBLISH', p .. 'note:' .. r, 'd' .. id)
end
redis.call('DEL', wkey)
return redis.call('HGETALL', tkey)
"""

STATUS = """
local p, id = ARGV[1], ARGV[2]
local tkey = p .. 'task:' .. id
local cur = redis.call('HGET', tkey, 'status')
if not cur or string.find(ARGV[6], cur, 1, true) then return 0 end
redis.call('HSET', tkey, 'status', ARGV[3])
if ARGV[3] == 'running' then redis.call('HSETNX', tkey, 'started_at', ARGV[4]) end
local seq = redis.call('HINCRBY', tkey, 'seq', 1)
redis.call('XADD', p .. 'ev:' .. id, 'MAXLEN', '~', ARGV[7], '*', 'e', ARGV[5], 's', seq)
for _, r in ipairs(redis.call('SMEMBERS', p .. 'watch:' .. id)) do
  redis.call('PUBLISH', p .. 'note:' .. r, 'e' .. id)
end
return 1
"""

EVENT = """
local p, id = ARGV[1], ARGV[2]
local tkey = p .. 'task:' .. id
local cur = redis.call('HGET', tkey, 'status')
if not cur or string.find(ARGV[5], cur, 1, true) then return 0 end
local seq = redis.call('HINCRBY', tkey, 'seq', 1)
redis.call('XADD', p .. 'ev:' .. id, 'MAXLEN', '~', ARGV[4], '*', 'e', ARGV[3], 's', seq)
for _, r in ipairs(redis.call('SMEMBERS', p .. 'watch:' .. id)) do
  redis.call('PUBLISH', p .. 'note:' .. r, 'e' .. id)
end
return 1
"""

WATCH = """
local p, id = ARGV[1], ARGV[2]
local tkey = p .. 'task:' .. id
local fields = redis.call('HGETALL', tkey)
local status = redis.call('HGET', tkey, 'status')
if status and not string.find(ARGV[5], status, 1, true) then
  local wkey = p .. 'watch:' .. id
  redis.call('SADD', wkey, ARGV[3])
  redis.call('EXPIRE', wkey, ARGV[4])
end
return fields
"""


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


class RedisStore(Store):
    """Tasks, sessions and contexts in Redis, shared by every replica of a deployment."""

    durable = True

    def __init__(self, client: Redis, namespace: str, replay_size: int = 256) -> None:
        self.client = client
        self.prefix = f"gw:{namespace}:"
        self.replay_size = max(1, replay_size)
        self._submit = client.register_script(SUBMIT)
        self._finish = client.register_script(FINISH)
        self._status = client.register_script(STATUS)
        self._event = client.register_script(EVENT)
        self._watch = client.register_script(WATCH)
        self._contexts: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._pending_contexts: dict[tuple[str, str], str] = {}
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
                        pipe.hset(self.key("ctx", sid), service, payload)
                    for sid, record in sessions.items():
                        if record is None:
                            pipe.delete(
                                self.key("session", sid),
                                self.key("session", sid, "tasks"),
                                self.key("ctx", sid),
                            )
                        else:
                            body = record.model_dump_json(include={"state", "created_at"})
                            pipe.set(self.key("session", sid), body)
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
        await self.client.set(self.key("session", record.session_id), body)

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
    ) -> Submitted:
        """Run the submit script; raises SubmitRefused unless the task was accepted. With
        `take_as` (a consumer name) the script also reads the next entry for that consumer."""
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
            ]
        )
        if isinstance(outcome, list):
            return Submitted("ok", outcome[1], outcome[2] if len(outcome) > 2 else None)
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
        event: TaskEvent,
    ) -> TaskRecord | None:
        """The terminal transition: the ended record if this call ended the task, else None."""
        outcome = await self._finish(
            args=[
                self.prefix,
                task_id,
                status.value,
                result.model_dump_json() if result is not None else "",
                error or "",
                repr(finished_at),
                event.model_dump_json(),
                FINISHED_TTL,
                _TERMINAL,
            ]
        )
        if not isinstance(outcome, list):  # "ended" (the first terminal state stands), "unknown"
            return None
        return _record(dict(zip(outcome[::2], outcome[1::2], strict=True)))

    async def write_events(self, events: list[TaskEvent]) -> None:
        """Progress of running tasks, in order, in one round trip: status changes move a task
        that has not ended; other events join its stream. Nothing is written after the end."""
        calls: list[tuple[AsyncScript, list[Any]]] = []
        for event in events:
            raw = event.model_dump_json()
            if event.kind == "status" and event.status is not None:
                args = [self.prefix, event.task_id, event.status.value, repr(event.at), raw]
                calls.append((self._status, [*args, _TERMINAL, self.replay_size]))
            else:
                args = [self.prefix, event.task_id, raw, self.replay_size, _TERMINAL]
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

    async def watch_task(self, task_id: str, replica: str) -> TaskRecord | None:
        """The task's record; if it has not ended, `replica` is notified (on its `note`
        channel) of its next events and of its end. Registering and reading are one atomic
        step, so an end cannot slip in between unseen."""
        fields = await self._watch(args=[self.prefix, task_id, replica, EVENTS_TTL, _TERMINAL])
        if not fields:
            return None
        if isinstance(fields, list):
            fields = dict(zip(fields[::2], fields[1::2], strict=True))
        return _record(fields)

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
