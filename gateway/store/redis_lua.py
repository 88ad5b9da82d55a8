"""The Lua scripts of the Redis store: every change that replicas could race on is one script,
atomic on the server (see gateway.store.redis for what each one guarantees).

Besides the task record, the scripts that change a task's status keep two derived structures in
the same atomic step, so that they can never disagree with the records:

- Task indexes (`tix:*` sorted sets) for `GET /control_plane/tasks` from any replica: one per
  sort field (`created`, `started`, `finished`; an unset time scores 0, "oldest", as in one
  process), and one per filter value (`st:<status>`, `svc:<service>`, `sess:<session>`) scored
  by creation time. A filtered page is their intersection (`LIST_TASKS`). Submitting trims a few
  tasks past their retention (records, events and index entries together), so the indexes stay
  bounded without a sweeper.
- The aggregate feed: one stream `feed` per namespace of every status change, whose entry ids
  are `<n>-0` with `n` from one counter. Positions are therefore the same on every replica, and
  a client can resume `GET /control_plane/events` on any of them (see
  gateway.control_plane.shared_events).
"""

from __future__ import annotations

GROUP = "workers"  # one consumer group per service stream
FINISHED_TTL = 86_400  # seconds a finished task's record and events stay readable
EVENTS_TTL = 86_400  # bound on the event stream (and record) of a task that never ends
TERMINAL = "completed failed cancelled timed_out"
TRIM_BATCH = 32  # expired tasks removed per retention batch
TRIM_EVERY = 8  # submissions between retention batches (amortized: no sweeper)

# Shared by the scripts below (each one is sent with these functions in front of it).
_HELPERS = """
local function feed_at(p, maxlen, n, id, status, svc, sid, seq, at)
  redis.call('XADD', p .. 'feed', 'MAXLEN', '~', maxlen, n .. '-0', 't', id, 's', status,
    'v', svc, 'x', sid, 'q', seq, 'a', at)
end
local function feed(p, maxlen, id, status, svc, sid, seq, at)
  feed_at(p, maxlen, redis.call('INCR', p .. 'feed:n'), id, status, svc, sid, seq, at)
end
local function restatus(p, id, old, new, created)
  if old ~= new then
    redis.call('ZREM', p .. 'tix:st:' .. old, id)
    redis.call('ZADD', p .. 'tix:st:' .. new, created, id)
  end
end
local STATUSES = {'pending', 'running', 'waiting_for_human', 'completed', 'failed',
  'cancelled', 'timed_out'}
local function unindex(p, id, svc, sid)
  for _, k in ipairs({'created', 'started', 'finished'}) do
    redis.call('ZREM', p .. 'tix:' .. k, id)
  end
  for _, st in ipairs(STATUSES) do redis.call('ZREM', p .. 'tix:st:' .. st, id) end
  if svc then redis.call('ZREM', p .. 'tix:svc:' .. svc, id) end
  if sid and sid ~= '' then redis.call('ZREM', p .. 'tix:sess:' .. sid, id) end
end
-- The status of a task that has not ended, else nil (unknown or terminal: nothing to record).
local function live_status(tkey, terminal)
  local cur = redis.call('HGET', tkey, 'status')
  if not cur or string.find(terminal, cur, 1, true) then return nil end
  return cur
end
-- Number an event of the task and append it to its stream (the replay, `replay` long).
local function append_event(p, id, tkey, event, replay)
  local seq = redis.call('HINCRBY', tkey, 'seq', 1)
  redis.call('XADD', p .. 'ev:' .. id, 'MAXLEN', '~', replay, '*', 'e', event, 's', seq)
  return seq
end
local function notify(p, id, note)
  local watchers = redis.call('SMEMBERS', p .. 'watch:' .. id)
  for _, r in ipairs(watchers) do redis.call('PUBLISH', p .. 'note:' .. r, note .. id) end
  return #watchers
end
"""

# ARGV: prefix, id, service, session, max queued, message, pending event, created_at, input,
# events ttl, trace, consumer to take it for ('' = none), feed maxlen, finished-before cutoff,
# created-before cutoff, started_at if the taker starts it at once ('' = no), running event.
SUBMIT = (
    _HELPERS
    + f"""
local p, id, svc, sid = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local tkey = p .. 'task:' .. id
if redis.call('EXISTS', tkey) == 1 then return 'exists' end
local stream = p .. 'stream:' .. svc
if redis.call('XLEN', stream) >= tonumber(ARGV[5]) then return 'full' end
if sid ~= '' and redis.call('EXISTS', p .. 'session:' .. sid) == 0 then return 'nosession' end
local created = ARGV[8]
local queued = false
if sid ~= '' then
  redis.call('RPUSH', p .. 'session:' .. sid .. ':tasks', id)
  queued = redis.call('RPUSH', p .. 'lane:' .. sid .. ':' .. svc, id) > 1
  redis.call('ZADD', p .. 'tix:sess:' .. sid, created, id)
end
local entry, taken, other, running = false, false, false, false
if not queued then
  entry = redis.call('XADD', stream, '*', 'm', ARGV[6])
  if ARGV[12] ~= '' then
    local got = redis.pcall('XREADGROUP', 'GROUP', '{GROUP}', ARGV[12], 'COUNT', 1,
      'STREAMS', stream, '>')
    if type(got) == 'table' and got[1] then
      local e = got[1][2][1]
      taken = e[1]
      if taken == entry then running = ARGV[16] ~= '' else other = e[2][2] end
    end
  end
end
-- one write per structure, with the status it ends this step in
local status, seq = 'pending', 1
if running then status, seq = 'running', 2 end
local fields = {{'task_id', id, 'service', svc, 'session_id', sid, 'input', ARGV[9],
  'status', status, 'created_at', created, 'msg', ARGV[6], 'trace', ARGV[11], 'seq', seq}}
if entry then fields[#fields + 1] = 'entry'; fields[#fields + 1] = entry end
if running then fields[#fields + 1] = 'started_at'; fields[#fields + 1] = ARGV[16] end
redis.call('HSET', tkey, unpack(fields))
redis.call('EXPIRE', tkey, ARGV[10])
local ekey = p .. 'ev:' .. id
redis.call('XADD', ekey, '*', 'e', ARGV[7], 's', 1)
if running then redis.call('XADD', ekey, '*', 'e', ARGV[17], 's', 2) end
redis.call('EXPIRE', ekey, ARGV[10])
redis.call('ZADD', p .. 'tix:created', created, id)
redis.call('ZADD', p .. 'tix:started', running and ARGV[16] or 0, id)
redis.call('ZADD', p .. 'tix:finished', 0, id)
redis.call('ZADD', p .. 'tix:st:' .. status, created, id)
redis.call('ZADD', p .. 'tix:svc:' .. svc, created, id)
local n = redis.call('INCRBY', p .. 'feed:n', seq)
feed_at(p, ARGV[13], n - seq + 1, id, 'pending', svc, sid, 1, created)
if running then feed_at(p, ARGV[13], n, id, 'running', svc, sid, 2, ARGV[16]) end
-- retention, a batch about every {TRIM_EVERY} submissions: finished tasks past it go whole
if math.floor(n / {TRIM_EVERY}) ~= math.floor((n - seq) / {TRIM_EVERY}) then
  for _, old in ipairs(redis.call('ZRANGE', p .. 'tix:finished', '(0', '(' .. ARGV[14],
      'BYSCORE', 'LIMIT', 0, {TRIM_BATCH})) do
    local f = redis.call('HMGET', p .. 'task:' .. old, 'service', 'session_id')
    unindex(p, old, f[1], f[2])
    redis.call('DEL', p .. 'task:' .. old, p .. 'ev:' .. old)
  end
  for _, old in ipairs(redis.call('ZRANGE', p .. 'tix:created', '-inf', '(' .. ARGV[15],
      'BYSCORE', 'LIMIT', 0, {TRIM_BATCH})) do
    local f = redis.call('HMGET', p .. 'task:' .. old, 'service', 'session_id')
    unindex(p, old, f[1], f[2])
  end
end
if queued then return 'queued' end
if not taken then return 'ok' end
if taken == entry then
  if running then return {{'ok', entry, '', 'running'}} end
  return {{'ok', entry}}
end
return {{'ok', taken, other}}
"""
)

# ARGV: prefix, id, status, result, error, finished_at, result event, finished ttl, terminal
# statuses, feed maxlen.
FINISH = (
    _HELPERS
    + """
local p, id = ARGV[1], ARGV[2]
local tkey = p .. 'task:' .. id
local f = redis.call('HMGET', tkey, 'status', 'service', 'entry', 'session_id', 'created_at',
  'seq', 'input', 'started_at', 'trace')
local cur = f[1]
if not cur then return 'unknown' end
if string.find(ARGV[9], cur, 1, true) then return 'ended' end
local svc, entry, sid, created = f[2], f[3], f[4] or '', f[5]
local seq = (tonumber(f[6]) or 0) + 1
redis.call('HSET', tkey, 'status', ARGV[3], 'result', ARGV[4], 'error', ARGV[5],
  'finished_at', ARGV[6], 'seq', seq)
redis.call('HDEL', tkey, 'msg')
redis.call('EXPIRE', tkey, ARGV[8])
restatus(p, id, cur, ARGV[3], created)
redis.call('ZADD', p .. 'tix:finished', ARGV[6], id)
local stream = p .. 'stream:' .. svc
if entry then
  redis.pcall('XACK', stream, 'workers', entry)
  redis.call('XDEL', stream, entry)
end
local ekey = p .. 'ev:' .. id
redis.call('XADD', ekey, '*', 'e', ARGV[7], 's', seq)
redis.call('EXPIRE', ekey, ARGV[8])
feed(p, ARGV[10], id, ARGV[3], svc, sid, seq, ARGV[6])
if sid ~= '' then
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
if notify(p, id, 'd') > 0 then redis.call('DEL', p .. 'watch:' .. id) end
return {svc, sid, f[7] or '', created or '', f[8] or '', seq, f[9] or ''}
"""
)

# ARGV: prefix, id, status, at, event, terminal statuses, replay size, feed maxlen.
STATUS = (
    _HELPERS
    + """
local p, id = ARGV[1], ARGV[2]
local tkey = p .. 'task:' .. id
local cur = live_status(tkey, ARGV[6])
if not cur then return 0 end
redis.call('HSET', tkey, 'status', ARGV[3])
if ARGV[3] == 'running' and redis.call('HSETNX', tkey, 'started_at', ARGV[4]) == 1 then
  redis.call('ZADD', p .. 'tix:started', ARGV[4], id)
end
local f = redis.call('HMGET', tkey, 'service', 'session_id', 'created_at')
restatus(p, id, cur, ARGV[3], f[3])
local seq = append_event(p, id, tkey, ARGV[5], ARGV[7])
feed(p, ARGV[8], id, ARGV[3], f[1], f[2] or '', seq, ARGV[4])
notify(p, id, 'e')
return 1
"""
)

# ARGV: prefix, id, event, replay size, terminal statuses.
EVENT = (
    _HELPERS
    + """
local p, id = ARGV[1], ARGV[2]
local tkey = p .. 'task:' .. id
if not live_status(tkey, ARGV[5]) then return 0 end
append_event(p, id, tkey, ARGV[3], ARGV[4])
notify(p, id, 'e')
return 1
"""
)

# ARGV: prefix, event JSON, feed maxlen. Any other entry of the aggregate feed (human queues).
FEED = """
local p = ARGV[1]
local n = redis.call('INCR', p .. 'feed:n')
redis.call('XADD', p .. 'feed', 'MAXLEN', '~', ARGV[3], n .. '-0', 'j', ARGV[2])
return n
"""

# ARGV: prefix, id, replica, ttl, terminal statuses.
WATCH = (
    _HELPERS
    + """
local p, id = ARGV[1], ARGV[2]
local tkey = p .. 'task:' .. id
local fields = redis.call('HGETALL', tkey)
if live_status(tkey, ARGV[5]) then
  local wkey = p .. 'watch:' .. id
  redis.call('SADD', wkey, ARGV[3])
  redis.call('EXPIRE', wkey, ARGV[4])
end
return fields
"""
)

# ARGV: prefix, sort index (created|started|finished), '1' = descending, limit, offset,
# cursor score ('' = none), cursor id, temp key suffix, filter indexes... Answers the total,
# then the records of the page (each a flat field list; empty if it expired meanwhile).
LIST_TASKS = """
local p = ARGV[1]
local src = p .. 'tix:' .. ARGV[2]
local desc = ARGV[3] == '1'
local limit, offset = tonumber(ARGV[4]), tonumber(ARGV[5])
local tmp = nil
if #ARGV > 8 then
  tmp = p .. 'tix:tmp:' .. ARGV[8]
  local args = {tmp, #ARGV - 7, src}
  for i = 9, #ARGV do args[#args + 1] = p .. 'tix:' .. ARGV[i] end
  args[#args + 1] = 'WEIGHTS'
  args[#args + 1] = 1
  for i = 9, #ARGV do args[#args + 1] = 0 end
  redis.call('ZINTERSTORE', unpack(args))
  src = tmp
end
local total = redis.call('ZCARD', src)
local start = 0
if ARGV[6] ~= '' then
  local score, cid = tonumber(ARGV[6]), ARGV[7]
  local held = redis.call('ZSCORE', src, cid)
  if held and tonumber(held) == score then
    if desc then start = redis.call('ZREVRANK', src, cid) + 1
    else start = redis.call('ZRANK', src, cid) + 1 end
  else
    -- the cursor's task left the list: count what sorts before it (ties by id)
    local ties = redis.call('ZRANGE', src, score, score, 'BYSCORE')
    if desc then
      start = redis.call('ZCOUNT', src, '(' .. score, '+inf')
      for _, m in ipairs(ties) do if m > cid then start = start + 1 end end
    else
      start = redis.call('ZCOUNT', src, '-inf', '(' .. score)
      for _, m in ipairs(ties) do if m < cid then start = start + 1 end end
    end
  end
end
start = start + offset
local ids
if desc then ids = redis.call('ZRANGE', src, start, start + limit - 1, 'REV')
else ids = redis.call('ZRANGE', src, start, start + limit - 1) end
if tmp then redis.call('DEL', tmp) end
local out = {total}
for _, id in ipairs(ids) do out[#out + 1] = redis.call('HGETALL', p .. 'task:' .. id) end
return out
"""
