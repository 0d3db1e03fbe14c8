"""The Lua scripts of RedisStore: every write is one script, so it is atomic on the server.

Each script takes the key prefix as ``ARGV[1]`` and begins with ``_PRELUDE``, which knows
the key layout (see ``piton.stores.redis``) and keeps the index keys in step with a run's
hash: a script reads the run's indexed fields (``state``) before and after it changes
the run, and ``reindex`` moves the run between indexes when one of them changed.

A script checks everything it can refuse before its first write: Redis runs a script
without interleaving other commands, but does not undo the writes of one that fails
midway. So a script that changes a run first asks ``damaged`` whether a field of its hash
that holds a number holds something else (a hash can hold anything), which would fail an
index update midway; such a run is refused, or left alone. Optional arguments arrive as
``''`` (absent) or ``'=' .. value``.
"""

from __future__ import annotations

from piton._core.status import FINAL_STATUSES, STATUSES

# the final statuses as a Lua set: {completed = true, failed = true, ...}
_FINAL = (
    "{" + ", ".join(f"{status} = true" for status in STATUSES if status in FINAL_STATUSES) + "}"
)

_PRELUDE = (
    f"""
local P = ARGV[1]
local FINAL = {_FINAL}
"""
    + r"""
local IDX = {'workflow', 'status', 'created_at', 'owner', 'lease_until', 'wake_at', 'inbox',
             'finished_at'}
local NUMBERS = {'epoch', 'seq', 'inbox', 'waiters', 'lease_until', 'wake_at', 'created_at',
                 'updated_at', 'finished_at'}

-- {'damaged-field', name, value} for the first field of the run's hash that should hold a
-- number and does not; nil when every one is fine
local function damaged(key)
  local values = redis.call('HMGET', key, unpack(NUMBERS))
  for i, name in ipairs(NUMBERS) do
    local v = values[i]
    if v then
      local n = tonumber(v)
      if not n or n ~= n then return {'damaged-field', name, v} end
    end
  end
  return nil
end

local function opt(value)
  if value == '' then return nil end
  return string.sub(value, 2)
end

local function state(key)
  local values = redis.call('HMGET', key, unpack(IDX))
  local r = {}
  for i, name in ipairs(IDX) do
    if values[i] then r[name] = values[i] end
  end
  return r
end

local function zput(on, key, score, id)
  if on then redis.call('ZADD', key, score, id) else redis.call('ZREM', key, id) end
end

local function slice(from, count)
  local out = {}
  for i = from, from + count - 1 do out[#out + 1] = ARGV[i] end
  return out
end

-- in chunks: Lua's stack limits how many values unpack() can give one call
local function chunked(command, key, values)
  for i = 1, #values, 1000 do
    redis.call(command, key, unpack(values, i, math.min(i + 999, #values)))
  end
end

-- the run in (on) or out of (not on) the indexes its state puts it in
local function index(id, r, on)
  local w, s, c = r.workflow, r.status, r.created_at or '0'
  if not w or not s then return end
  zput(on, P .. ':status:' .. s, c, id)
  zput(on, P .. ':workflow-status:' .. s .. ':' .. w, c, id)
  if s == 'parked' then
    if r.wake_at then zput(on, P .. ':wake:' .. w, r.wake_at, id) end
    if (tonumber(r.inbox or '0') or 0) > 0 then zput(on, P .. ':mail:' .. w, c, id) end
  elseif s == 'running' then
    local score = '+inf'
    if not r.owner then score = '-inf' elseif r.lease_until then score = r.lease_until end
    zput(on, P .. ':lease:' .. w, score, id)
    if r.owner then
      local owned = P .. ':owned:' .. r.owner
      if on then
        redis.call('SADD', owned, id)
        redis.call('SADD', P .. ':owners', r.owner)
      else
        redis.call('SREM', owned, id)
        if redis.call('EXISTS', owned) == 0 then redis.call('SREM', P .. ':owners', r.owner) end
      end
    end
  elseif FINAL[s] and r.finished_at then
    zput(on, P .. ':finished', r.finished_at, id)
  end
end

local function reindex(id, old, new)
  for _, name in ipairs(IDX) do
    if old[name] ~= new[name] then
      index(id, old, false)
      index(id, new, true)
      return
    end
  end
end"""
)

# KEYS: run, journal, stream, inbox, inbox-step, snapshot, history
# ARGV: prefix, run_id, channel (told the id of a queued run: a worker may take it),
#       n_fields, field, value, ..., has_snapshot (0/1), snapshot (if 1), n_entries,
#       entries..., stream events...
CREATE = r"""
local id, run = ARGV[2], KEYS[1]
if redis.call('EXISTS', run) == 1 then return 0 end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7])
local n_fields = tonumber(ARGV[4])
local at = 5 + n_fields
redis.call('HSET', run, unpack(slice(5, n_fields)))
if tonumber(ARGV[at]) == 1 then  -- the run as it stood before its entries
  redis.call('HSET', KEYS[6], 'seq', '0', 'data', ARGV[at + 1])
  at = at + 1
end
at = at + 1
local n_entries = tonumber(ARGV[at])
local pairs_ = {}
for i = 1, n_entries do
  pairs_[#pairs_ + 1] = tostring(i)
  pairs_[#pairs_ + 1] = ARGV[at + i]
end
chunked('HSET', KEYS[2], pairs_)
chunked('RPUSH', KEYS[3], slice(at + n_entries + 1, #ARGV - at - n_entries))
local r = state(run)
redis.call('ZADD', P .. ':runs', r.created_at, id)
redis.call('ZADD', P .. ':workflow:' .. r.workflow, r.created_at, id)
index(id, r, true)
if r.status == 'queued' then redis.call('PUBLISH', ARGV[3], id) end
return 1
"""

# KEYS: run, journal, stream, inbox, inbox-step, snapshot, history
# ARGV: prefix, run_id, epoch, seq, new_seq, now, status, final, release,
#       result?, error?, wake_at?, fingerprint?, snapshot?, waiters? (absent: a plain commit),
#       n_entries, n_stream, n_done, entries..., stream events..., inbox ids done...
COMMIT = r"""
local id, run = ARGV[2], KEYS[1]
local cur = redis.call('HMGET', run, 'epoch', 'owner', 'seq')
if not cur[1] then return {'missing'} end
local bad = damaged(run)
if bad then return bad end
if tonumber(cur[1]) ~= tonumber(ARGV[3]) then return {'epoch', cur[1]} end
if not cur[2] then return {'released', cur[1]} end
if tonumber(cur[3]) ~= tonumber(ARGV[4]) then return {'seq', cur[3]} end
local kinds = {KEYS[2], 'hash', KEYS[3], 'list', KEYS[4], 'hash', KEYS[5], 'hash', KEYS[6], 'hash',
               KEYS[7], 'hash'}
for i = 1, #kinds, 2 do  -- a damaged key would fail a write midway: refuse before the first
  local kind = redis.call('TYPE', kinds[i]).ok
  if kind ~= 'none' and kind ~= kinds[i + 1] then return {'damaged', kinds[i]} end
end
local old = state(run)
local n_entries, n_stream, n_done = tonumber(ARGV[16]), tonumber(ARGV[17]), tonumber(ARGV[18])
local at = 19
local snapshot = opt(ARGV[14])
local entries_key = KEYS[2]
if snapshot then  -- it sums up the run to here: the journal's entries, and this commit's,
  -- go to the history (kept for people and forks; load reads the snapshot and what follows)
  chunked('HSET', KEYS[7], redis.call('HGETALL', KEYS[2]))
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[6], 'seq', ARGV[5], 'data', snapshot)
  entries_key = KEYS[7]
end
if n_entries > 0 then
  local seq, pairs_ = tonumber(ARGV[4]), {}
  for i = 1, n_entries do
    pairs_[#pairs_ + 1] = string.format('%d', seq + i)
    pairs_[#pairs_ + 1] = ARGV[at + i - 1]
  end
  chunked('HSET', entries_key, pairs_)
end
at = at + n_entries
chunked('RPUSH', KEYS[3], slice(at, n_stream))
at = at + n_stream
if n_done > 0 then
  local done = slice(at, n_done)
  chunked('HDEL', KEYS[4], done)
  chunked('HDEL', KEYS[5], done)
end
local fields = {'seq', ARGV[5], 'updated_at', ARGV[6], 'status', ARGV[7],
                'inbox', redis.call('HLEN', KEYS[4])}
local names = {'result', 'error', 'wake_at', 'fingerprint'}
for i, name in ipairs(names) do
  local value = opt(ARGV[9 + i])
  if value then
    fields[#fields + 1] = name
    fields[#fields + 1] = value
  end
end
local waiters = opt(ARGV[15])
if waiters then
  fields[#fields + 1] = 'waiters'
  fields[#fields + 1] = waiters
end
if ARGV[12] == '' then redis.call('HDEL', run, 'wake_at') end
if ARGV[8] == '1' then
  fields[#fields + 1] = 'finished_at'
  fields[#fields + 1] = ARGV[6]
end
redis.call('HSET', run, unpack(fields))
if ARGV[8] == '1' or ARGV[9] == '1' then redis.call('HDEL', run, 'owner', 'lease_until') end
reindex(id, old, state(run))
return {'ok'}
"""

# KEYS: run
# ARGV: prefix, run_id, owner, expected epoch, expected owner?, owner dead ('1'/'0'), now,
#       lease_until
CLAIM = r"""
local id, run = ARGV[2], KEYS[1]
local cur = redis.call('HMGET', run, 'epoch', 'owner', 'status', 'lease_until')
if not cur[1] then return {'missing'} end
if damaged(run) then return {'changed'} end  -- the caller reads the run again, and names it
local holder = cur[2] or nil
if tonumber(cur[1]) ~= tonumber(ARGV[4]) or holder ~= opt(ARGV[5]) then return {'changed'} end
if FINAL[cur[3]] then return {'no'} end
local expired = cur[4] and tonumber(cur[4]) < tonumber(ARGV[7])
if not (holder == nil or holder == ARGV[3] or expired or ARGV[6] == '1') then return {'no'} end
local old = state(run)
local epoch = redis.call('HINCRBY', run, 'epoch', 1)
redis.call('HSET', run, 'owner', ARGV[3], 'lease_until', ARGV[8], 'status', 'running',
           'updated_at', ARGV[7])
reindex(id, old, state(run))
return {'ok', epoch}
"""

# ARGV: prefix, owner, lease_until, run_id, epoch, run_id, epoch, ...
RENEW = r"""
local lost = {}
for i = 4, #ARGV, 2 do
  local id = ARGV[i]
  local run = P .. ':run:' .. id
  local cur = redis.call('HMGET', run, 'epoch', 'owner')
  if cur[1] and tonumber(cur[1]) == tonumber(ARGV[i + 1]) and cur[2] == ARGV[2]
     and not damaged(run) then
    local old = state(run)
    redis.call('HSET', run, 'lease_until', ARGV[3])
    reindex(id, old, state(run))
  else
    lost[#lost + 1] = id
  end
end
return lost
"""

# ARGV: prefix, now, owner, channel (told a released run's id: a worker may take it),
#       run_id, epoch, run_id, epoch, ...
RELEASE = r"""
local released = nil
for i = 5, #ARGV, 2 do
  local id = ARGV[i]
  local run = P .. ':run:' .. id
  local cur = redis.call('HMGET', run, 'epoch', 'owner', 'status')
  if cur[1] and tonumber(cur[1]) == tonumber(ARGV[i + 1]) and cur[2] == ARGV[3]
     and not (cur[3] and FINAL[cur[3]]) and not damaged(run) then
    local old = state(run)
    redis.call('HDEL', run, 'owner', 'lease_until')
    redis.call('HSET', run, 'updated_at', ARGV[2])
    reindex(id, old, state(run))
    released = released or id
  end
end
if released then redis.call('PUBLISH', ARGV[4], released) end
return 0
"""

# ARGV: prefix, owner, now (run time), wall (real time), lease_until, limit, n_dead,
#       dead owners (of this host, found dead by the caller)..., workflows...
# Claims up to `limit` runs of the workflows that base.claimable() takes, kind by kind
# (as PostgreSQL does): running runs with an expired lease, no owner or a dead owner;
# parked runs with an inbox event; parked runs whose deadline passed; queued runs, oldest
# first. Each kind is read from its index page by page; a run that cannot be taken stays
# in its index and is stepped over. Returns {damaged: {id, field, value, ...}, claimed:
# {the run's hash as HGETALL gives it, ...}}.
CLAIM_RUNNABLE = r"""
local owner, now, wall = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local limit, n_dead = tonumber(ARGV[6]), tonumber(ARGV[7])
local dead, wanted = {}, {}
for i = 8, 7 + n_dead do dead[ARGV[i]] = true end
local workflows = slice(8 + n_dead, #ARGV - 7 - n_dead)
for _, w in ipairs(workflows) do wanted[w] = true end
local taken, seen, claimed, bad = 0, {}, {}, {}

local function runnable(r)
  local s = r.status
  if s == 'queued' then return true end
  if s == 'parked' then
    return (tonumber(r.inbox or '0') or 0) > 0 or (r.wake_at ~= nil and tonumber(r.wake_at) <= now)
  end
  if s ~= 'running' then return false end
  if not r.owner then return true end
  if r.lease_until and tonumber(r.lease_until) < now then return true end
  return dead[r.owner] == true
end

local function may_claim(r)
  if not r.owner or r.owner == owner then return true end
  if r.lease_until and tonumber(r.lease_until) < wall then return true end
  return dead[r.owner] == true
end

-- claim the run if it may be taken; true if it was
local function try(id)
  if seen[id] then return false end
  seen[id] = true
  local run = P .. ':run:' .. id
  if redis.call('EXISTS', run) == 0 then return false end
  local d = damaged(run)
  if d then
    bad[#bad + 1] = id
    bad[#bad + 1] = d[2]
    bad[#bad + 1] = d[3]
    return false
  end
  local old = state(run)
  if not (old.workflow and wanted[old.workflow] and runnable(old) and may_claim(old)) then
    return false
  end
  redis.call('HINCRBY', run, 'epoch', 1)
  redis.call('HSET', run, 'owner', owner, 'lease_until', ARGV[5], 'status', 'running',
             'updated_at', ARGV[4])
  reindex(id, old, state(run))
  taken = taken + 1
  claimed[#claimed + 1] = redis.call('HGETALL', run)
  return true
end

-- the runs of a sorted set (by score from `min` to `max`, or all by rank), page by page
local function drain(key, min, max)
  local skipped = 0
  while taken < limit do
    local want, ids = limit - taken, nil
    if min then
      ids = redis.call('ZRANGEBYSCORE', key, min, max, 'LIMIT', skipped, want)
    else
      ids = redis.call('ZRANGE', key, skipped, skipped + want - 1)
    end
    if #ids == 0 then return end
    for _, id in ipairs(ids) do
      if not try(id) then skipped = skipped + 1 end
    end
  end
end

for _, w in ipairs(workflows) do drain(P .. ':lease:' .. w, '-inf', '(' .. ARGV[3]) end
for name in pairs(dead) do
  for _, id in ipairs(redis.call('SMEMBERS', P .. ':owned:' .. name)) do
    if taken >= limit then break end
    try(id)
  end
end
for _, w in ipairs(workflows) do drain(P .. ':mail:' .. w) end
for _, w in ipairs(workflows) do drain(P .. ':wake:' .. w, '-inf', ARGV[3]) end
for _, w in ipairs(workflows) do drain(P .. ':workflow-status:queued:' .. w) end
return {bad, claimed}
"""

# KEYS: run, inbox, inbox-step
# ARGV: prefix, run_id, event, step?, channel (told the run id: a worker may wake), limit?
DELIVER = r"""
local id, run = ARGV[2], KEYS[1]
if redis.call('EXISTS', run) == 0 then return {'missing'} end
local bad = damaged(run)
if bad then return bad end
local limit = opt(ARGV[6])  -- checked in the script that inserts: atomic
if limit and redis.call('HLEN', KEYS[2]) >= tonumber(limit) then return {'full'} end
local old = state(run)
local n = redis.call('INCR', P .. ':inbox-id')
redis.call('HSET', KEYS[2], n, ARGV[3])
local step = opt(ARGV[4])
if step then redis.call('HSET', KEYS[3], n, step) end
redis.call('HSET', run, 'inbox', redis.call('HLEN', KEYS[2]))
reindex(id, old, state(run))
redis.call('PUBLISH', ARGV[5], id)
return {'ok', n}
"""

# ARGV: prefix, cutoff (finished_at below it), batch size
# Returns {runs deleted, ids looked at}: fewer ids than the batch size means done.
PRUNE = r"""
local ids = redis.call('ZRANGEBYSCORE', P .. ':finished', '-inf', '(' .. ARGV[2],
                       'LIMIT', 0, tonumber(ARGV[3]))
local deleted = 0
for _, id in ipairs(ids) do
  local run = P .. ':run:' .. id
  local r = state(run)
  redis.call('ZREM', P .. ':finished', id)
  if r.status and FINAL[r.status] then
    index(id, r, false)
    redis.call('ZREM', P .. ':runs', id)
    redis.call('ZREM', P .. ':workflow:' .. r.workflow, id)
    redis.call('DEL', run, P .. ':journal:' .. id, P .. ':history:' .. id, P .. ':snapshot:' .. id,
               P .. ':stream:' .. id, P .. ':inbox:' .. id, P .. ':inbox-step:' .. id)
    deleted = deleted + 1
  end
end
return {deleted, #ids}
"""

SCRIPTS: dict[str, str] = {
    name: _PRELUDE + body
    for name, body in {
        "create": CREATE,
        "commit": COMMIT,
        "claim": CLAIM,
        "renew": RENEW,
        "release": RELEASE,
        "claim_runnable": CLAIM_RUNNABLE,
        "deliver": DELIVER,
        "prune": PRUNE,
    }.items()
}

__all__ = ["SCRIPTS"]
