-- Shared by the scripts that hand out leases (a helper of the library, after session.lua and
-- ends.lua: library.rs). Task keys are built from `base`, the queue's key prefix: every
-- key of a queue shares its hash tag, so they live in one slot even on a cluster.
--
-- Both scripts start with the same arguments, read into one table by `leasing_context`; `given`
-- is how many entries the claim was handed already read (they are pending, but none runs yet):
-- ARGV[1..10]: key base, group, consumer, token base, the worker's id (recorded with each
-- attempt it starts), events maxlen, dead-letter retention ms, retention ms, the kinds the worker runs (comma-separated, or '*' for every kind), then (claim) how many
-- to take or (finish) how many more to take.
-- KEYS[1]: events.

-- Entries of the ready streams are acknowledged, never deleted one by one: `settle` trims them in
-- bulk once the group is done with them. (XDEL cost more than anything else the finish did for a
-- task; a trim frees whole nodes of the stream at once.)

-- Payloads up to this size come with the lease; a larger one the worker reads with a plain GET,
-- as copying it through Lua costs Redis more than the worker's extra round trip.
local INLINE_PAYLOAD_MAX = 16384

-- The lanes of `kinds` (comma-separated, or '*' for every kind) that the queue's set `set`
-- names: 'ready-lanes' (lanes that may hold tasks not handed out) or 'lanes' (every lane).
local function lanes_for(base, kinds, set)
  if kinds == '*' then
    return redis.call('SMEMBERS', base .. ':' .. set)
  end
  local wanted = {}
  for kind in string.gmatch(kinds, '[^,]+') do
    wanted[#wanted + 1] = kind
  end
  if #wanted == 0 then
    return wanted
  end
  local has = redis.call('SMISMEMBER', base .. ':' .. set, unpack(wanted))
  local lanes = {}
  for i, kind in ipairs(wanted) do
    if has[i] == 1 then
      lanes[#lanes + 1] = kind
    end
  end
  return lanes
end

-- Redis's own clock, in ms, as a number and as text: what a queue's rate log is kept by. The
-- caller's `now` was read before its round trip, on its own clock: a worker slowed down, or on
-- another host, would stamp starts in the past and slip extra starts into a window another worker
-- had already moved past.
local function redis_now()
  local clock = redis.call('TIME')
  local ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
  return ms, tostring(ms)
end

-- A lane stream's place (1-3) as a run reply gives it. (A number turned into text goes through
-- printf, which costs Redis more than most of what a lease does: docs/benchmark-notes.md.)
local STREAM_TEXT = {'1', '2', '3'}
-- The record's `waited` when its attempt was taken over from a holder that stopped: the finish
-- takes no wait sample (the wait was the stopped attempt's). Otherwise empty or absent: the
-- finish samples the wait from the ready entry's id, which Redis stamps as the task joins it.
local NOT_SAMPLED = '-'

-- What a grant's view shows of a record beyond the run reply (pull.lua asks for them: `views`):
-- fields of its own, and options.
local VIEW_FIELDS = {'created', 'finished', 'error', 'next_run'}
local VIEW_OPTION_FIELDS = {'subscription', 'wf', 'wf_step'}
local NO_FIELDS = {}

local function leasing_context(given)
  local now_ms, now = redis_now()
  return {
    given = given or 0,
    base = ARGV[1], group = ARGV[2], consumer = ARGV[3], token_base = ARGV[4], worker = ARGV[5],
    now = now, now_ms = now_ms,
    maxlen = ARGV[6], dead_keep = ARGV[7], keep = ARGV[8],
    kinds = ARGV[9], events = KEYS[1], leases = 0,
    -- Lanes handed an entry back by this script: still ready, whatever its reads found.
    refilled = {},
  }
end

-- A ready stream is trimmed once it holds more entries than this (a unit test reads it). A trim
-- frees whole nodes of about a hundred entries, so a shorter stream has little to free, and the
-- look at what is pending cost a finish more than anything else it does once per call
-- (docs/benchmark-notes.md, "Seventh step").
local TRIM_ABOVE = 256

-- Acknowledges `entries` of `stream` in one call, then, once the stream holds more than
-- TRIM_ABOVE entries, trims every entry the group is done with: those older than the oldest
-- still pending or, with none pending, than the last handed out. The trim is approximate: it
-- frees whole nodes, leaving at most a node's worth behind.
local function settle(stream, group, entries)
  redis.call('XACK', stream, group, unpack(entries))
  if redis.call('XLEN', stream) <= TRIM_ABOVE then
    return
  end
  local pending = redis.pcall('XPENDING', stream, group)
  if pending.err then
    -- The group is gone (someone deleted the stream): nothing of it to trim.
    return
  end
  local done_before = pending[2] or group_info(stream, group)['last-delivered-id']
  redis.call('XTRIM', stream, 'MINID', '~', done_before)
end

-- How many tasks the queue's settings let this script start now (`budget`, a large number when
-- nothing limits it) and, when none, why (`blocked`: 'paused', 'concurrency' or 'rate') and in
-- how many ms to look again (`retry_ms`). Read once per script into `ctx`.
local function start_budget(ctx)
  local base = ctx.base
  local s = redis.call('HMGET', base .. ':settings', 'paused', 'concurrency', 'rate_limit',
    'rate_period_ms')
  ctx.budget, ctx.blocked, ctx.retry_ms = 1000000, '', 0
  if s[1] == '1' then
    ctx.budget, ctx.blocked, ctx.retry_ms = 0, 'paused', 1000
    return
  end
  local concurrency = tonumber(s[2])
  if concurrency then
    -- What runs is what the group has handed out and not had back: its pending entries (a
    -- lease whose holder died counts until it is taken over). Entries given to this script are
    -- pending already but run only if it starts them.
    local running = -ctx.given
    for _, stream in ipairs(all_ready_streams(base)) do
      local info = redis.call('EXISTS', stream) == 1 and group_info(stream, ctx.group)
      running = running + ((info and info['pending']) or 0)
    end
    ctx.budget = math.max(concurrency - running, 0)
    if ctx.budget == 0 then
      ctx.blocked, ctx.retry_ms = 'concurrency', 100
      return
    end
  end
  local limit, period = tonumber(s[3]), tonumber(s[4])
  if limit and period then
    -- A log of the starts in the last period: a sliding window, exact at every instant.
    local log, now = base .. ':starts', ctx.now_ms
    redis.call('ZREMRANGEBYSCORE', log, '-inf', now - period)
    local left = limit - redis.call('ZCARD', log)
    if left <= 0 then
      local oldest = redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')
      ctx.budget, ctx.blocked = 0, 'rate'
      ctx.retry_ms = math.max((tonumber(oldest[2]) or now) + period - now, 1)
      return
    end
    ctx.budget = math.min(ctx.budget, left)
    ctx.rate_period = period
  end
end

-- Task `id` starts an attempt (its entry, pending, counts against the concurrency): it counts
-- against the queue's rate.
local function mark_start(ctx, token)
  if ctx.rate_period then
    local log = ctx.base .. ':starts'
    redis.call('ZADD', log, ctx.now, token)
    redis.call('PEXPIRE', log, ctx.rate_period)
  end
  ctx.budget = ctx.budget - 1
end

-- Puts ready entry `entry` of `stream` (task `id`) back at the end of its stream, for when the
-- queue's limits let it start: taken from the group (acknowledged) and added afresh.
local function hand_back(ctx, kind, stream, entry, id)
  settle(stream, ctx.group, {entry})
  redis.call('XADD', stream, '*', 'task', id)
  mark_ready(ctx.base, kind)
  ctx.refilled[kind] = true
end

-- Takes the lease on ready entry `entry` (of stream `s` of `kind`'s lane) for task `id`. Returns, for a task to
-- run, these fields in this order (`Run` in queue/lease.rs names them; a unit test compares the
-- two): those before the `|` in one string, separated by the unit separator (each is Courier's
-- own text: ids, numbers, a kind, a trace context), and each after it a string of its own (they
-- may hold anything). Redis turns each string of a reply into a reply of its own, so one for
-- twelve costs it less (docs/benchmark-notes.md, "Ninth step").
-- run reply: run, id, stream, entry, token, attempt, kind, max_attempts, timeout_ms, payload_is, payload_ref, traceparent | payload_type, session, idempotency_key, payload
-- `run` is the word 'run', `stream` the stream's index (1-3), `payload_is` 1 (here), 2 (large:
-- read it yourself) or 0 (gone): a small payload comes with the lease, saving the worker a round
-- trip; `payload_ref` names the task a shared payload is stored under; `traceparent` is the
-- trace context the attempt continues ('' for a task stored without one). Returns
-- {'drop'} when the task is gone or finished (its entry is dropped), {'cancelled'} when it was
-- cancelled while a dead holder ran it, {'expired'} when its expiry passed before this attempt
-- could start (it ends as a dead letter), and {'later'} when the queue's limits let nothing
-- start now (the entry goes back to the end of its stream). With `ctx.views` (pull.lua), a run
-- reply goes on with field-value pairs: the record fields a task's view shows that the run
-- reply does not (its status is `running`).
local function take_lease(ctx, kind, s, entry, id)
  local base, now = ctx.base, ctx.now
  local stream = lane_stream(base, kind, s)
  local task = base .. ':task:' .. id
  local f = {}
  if id ~= '' then
    f = redis.call('HMGET', task, 'status', 'cancel', 'attempts', 'started', 'options',
      'traceparent', 'payload', unpack(ctx.views and VIEW_FIELDS or NO_FIELDS))
  end
  local status = f[1]
  if (not status) or status == 'succeeded' or status == 'failed' or status == 'cancelled' then
    settle(stream, ctx.group, {entry})
    return {'drop'}
  end
  local options = options_of(task, f[5])
  if f[2] == '1' then
    -- Cancelled while its previous holder ran it, and that holder died: it ends here, the
    -- attempt logged as cancelled (as release.lua logs one its stopping worker hands back).
    settle(stream, ctx.group, {entry})
    log_stopped(task, f[3], 'cancelled', now)
    end_running(task, 'cancel')
    redis.call('HSET', task, 'status', 'cancelled', 'finished', now)
    keep_after_end(base, id, options.payload_ref, options.idem, ctx.keep, now, f[7] and true)
    count_ends(base, now, 1)
    emit_event(ctx.events, ctx.maxlen, base, 'cancelled', id, kind, 'cancelled', f[3], '', '', now)
    if options.session then
      leave_session(base, base .. ':session:' .. options.session, id)
    end
    return {'cancelled'}
  end
  local expires = tonumber(options.expires)
  if expires and expires <= tonumber(now) then
    settle(stream, ctx.group, {entry})
    expire_task(base, id, now, ctx.dead_keep, ctx.events, ctx.maxlen)
    return {'expired'}
  end
  -- A takeover (its dead holder's task still counts as running) needs no room of its own.
  if status ~= 'running' and ctx.budget <= 0 then
    hand_back(ctx, kind, stream, entry, id)
    return {'later'}
  end
  local token = ctx.token_base .. ':' .. count_text(ctx.leases)
  ctx.leases = ctx.leases + 1
  mark_start(ctx, token)
  local attempt = next_attempt(f[3])
  local started = f[4] or now
  -- (A start writes no `updated`: its `attempt_started` says when the record changed, record.rs.)
  if not f[4] then
    -- A first start: no earlier attempt left progress or a wait mark.
    redis.call('HSET', task, 'status', 'running', 'lease', token, 'attempts', attempt,
      'started', now, 'attempt_started', now, 'worker', ctx.worker)
  else
    local takeover = status == 'running'
    if takeover then
      -- A takeover: the attempt that stopped is logged as lost.
      log_stopped(task, f[3], 'lost', now)
    end
    -- The earlier attempt's progress and wait mark go.
    redis.call('HDEL', task, 'progress', 'waited')
    redis.call('HSET', task, 'status', 'running', 'lease', token, 'attempts', attempt,
      'attempt_started', now, 'worker', ctx.worker)
    if takeover then
      -- Its wait was the attempt's that stopped.
      redis.call('HSET', task, 'waited', NOT_SAMPLED)
    end
  end
  emit_event(ctx.events, ctx.maxlen, base, 'running', id, kind, 'running', attempt, '', '', now)
  local payload, has = f[7], '2'
  if payload then
    -- A small payload lives in the record (enqueue.lua).
    has = '1'
  elseif (tonumber(options.payload_bytes) or 0) <= INLINE_PAYLOAD_MAX then
    payload = redis.call('GET', payload_key(base, id, options.payload_ref))
    has = payload and '1' or '0'
  end
  local run = {'run\31' .. id .. '\31' .. STREAM_TEXT[s] .. '\31' .. entry .. '\31' .. token .. '\31'
    .. attempt .. '\31' .. kind .. '\31' .. (options.max_attempts or '1') .. '\31'
    .. (options.timeout_ms or '') .. '\31' .. has .. '\31' .. (options.payload_ref or '') .. '\31'
    .. (f[6] or ''), options.payload_type or '', options.session or '', options.idem or '',
    payload or ''}
  if ctx.views then
    -- Where the entry is, for pull.lua to shorten the lease.
    ctx.taken[#ctx.taken + 1] = {kind, s, entry}
    -- The rest of the task's view as this lease leaves its record: a grant shows it without a
    -- read of the whole record.
    for _, field in ipairs({'updated', now, 'started', started, 'payload_bytes',
        options.payload_bytes or '', 'expires', options.expires or ''}) do
      run[#run + 1] = field
    end
    for i, field in ipairs(VIEW_FIELDS) do
      run[#run + 1] = field
      run[#run + 1] = f[7 + i] or ''
    end
    for _, field in ipairs(VIEW_OPTION_FIELDS) do
      run[#run + 1] = field
      run[#run + 1] = options[field] or ''
    end
  end
  return run
end

-- The task id an entry's fields name ('' when none does).
local function task_of(fields)
  for i = 1, #fields, 2 do
    if fields[i] == 'task' then
      return fields[i + 1]
    end
  end
  return ''
end

-- Reads up to `count` new entries of the worker's lanes (no more than the queue's limits let
-- start), the most urgent priority first, takes their leases and appends the replies to
-- `replies`.
local function take_new(ctx, count, replies)
  count = math.min(count, ctx.budget)
  if count <= 0 then
    return
  end
  -- Per lane, how many of its streams a read found fewer entries on than it asked for, and the
  -- lanes a stream of which has no group.
  local short, groupless = {}, {}
  -- Read here, not with the context: a claim on entries it was given reads no lane.
  local lanes = lanes_for(ctx.base, ctx.kinds, 'ready-lanes')
  for s = 1, 3 do
    for _, kind in ipairs(lanes) do
      if count <= 0 then
        return
      end
      local read = redis.pcall('XREADGROUP', 'GROUP', ctx.group, ctx.consumer, 'COUNT', count,
        'STREAMS', lane_stream(ctx.base, kind, s), '>')
      local got = {}
      if type(read) == 'table' and read.err then
        -- The stream has no group: Redis lost the lane, and the enqueue that found it so makes
        -- it again (queue/enqueue.rs). Nothing to read yet, the lane stays ready, and the ends
        -- this call applied stand.
        groupless[kind] = true
      elseif read then
        got = read[1][2]
      end
      if #got < count then
        short[kind] = (short[kind] or 0) + 1
      end
      for _, e in ipairs(got) do
        replies[#replies + 1] = take_lease(ctx, kind, s, e[1], task_of(e[2]))
        count = count - 1
      end
    end
  end
  -- A lane read to the end of all three streams holds nothing more to hand out.
  for kind, streams in pairs(short) do
    if streams == 3 and not ctx.refilled[kind] and not groupless[kind] then
      unmark_ready(ctx.base, kind)
    end
  end
end
