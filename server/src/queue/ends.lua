-- Shared by the scripts that end a task (a helper of the library, after session.lua:
-- library.rs). Retention counts from a task's end, never from its submission: a waiting or running
-- task keeps its record, payload and idempotency key without a TTL, and these helpers give them
-- one when it ends. Keys are built from `base`, the queue's key prefix (one hash tag).

-- The key of task `id`'s payload: its own, or the one it shares with the other tasks of a topic
-- message, named by the record's `payload_ref`.
local function payload_key(base, id, ref)
  if ref and ref ~= '' then
    return base .. ':payload:' .. ref
  end
  return base .. ':payload:' .. id
end

-- Counts `n` ends in the queue's tally of ends per second (`ended`: Unix second -> count), from
-- which the queue's view reads the tasks finished in the last minute. A script that ends many
-- tasks counts them once; the finish, which ends nearly every task, returns its count instead,
-- and the process writes it with its stats (`stats::Tally`). The first end of a second drops the
-- seconds older than two minutes, so the tally stays small.
local function count_ends(base, now, n)
  local tally = base .. ':ended'
  -- (`now` is ms as text: its second is all of it but the last three digits.)
  if redis.call('HINCRBY', tally, string.sub(now, 1, -4), count_text(n)) == n
      and redis.call('HLEN', tally) > 120 then
    local second = math.floor(tonumber(now) / 1000)
    for _, field in ipairs(redis.call('HKEYS', tally)) do
      if (tonumber(field) or 0) < second - 120 then
        redis.call('HDEL', tally, field)
      end
    end
  end
end

-- The attempt log of a task: one field per attempt, `a:{attempt}` = outcome, start ms, end ms,
-- worker and error, separated by the unit separator (the error last, so it may hold anything);
-- `Queue::attempts` reads them. Returns the field and its value, for the caller's own HSET.
local function attempt_log_entry(attempt, outcome, started, ended, worker, err)
  return 'a:' .. (attempt or '0'), outcome .. '\31' .. (started or '') .. '\31' .. ended .. '\31'
    .. (worker or '') .. '\31' .. (err or '')
end

-- Adds attempt `attempt` of `task` (its record's key) to the task's attempt log.
local function log_attempt(task, attempt, outcome, started, ended, worker, err)
  local field, entry = attempt_log_entry(attempt, outcome, started, ended, worker, err)
  redis.call('HSET', task, field, entry)
end

-- The time buckets of a queue's stats (`stats.rs` reads them, and writes the counts finish.lua
-- returns): per second in one hash per minute (kept 17 minutes), per minute in one per hour (25
-- hours), per hour in one per day (31 days): {name, span of a key ms, span of a field ms, how
-- long a key is kept ms}.
local STATS_SPANS = {{'s', 60000, 1000, 1020000}, {'m', 3600000, 60000, 90000000},
  {'h', 86400000, 3600000, 2678400000}}

-- The histogram bin of a duration of `ms` (a number, not negative): a quarter of a doubling wide
-- (bin b holds durations up to 2^((b+1)/4) - 1 ms). Every end takes two samples, so the math it
-- needs is looked up once per call (call.lua; docs/benchmark-notes.md, "Seventh step"): while
-- Redis loads the library, `math` is not there to look up.
local floor, log
local LN2 = 0.6931471805599453 -- math.log(2)
local function latency_bin(ms)
  return floor(4 * log(ms + 1) / LN2)
end

-- Counts, at `now`, `succeeded` and `failed` tasks that ended and the wait and run samples
-- (`bins`: 'w{bin}' or 'r{bin}' -> count) in the queue's stats buckets: a field `{n}s` and
-- `{n}f` per second, minute and hour; the samples in the second's key only (`stats.rs` reads the
-- percentiles of the last 15 minutes from them). A script that ends many tasks counts them once.
-- (The finish, which ends nearly every task, returns its counts instead: `stats::Tally`.)
local function record_stats(base, now, succeeded, failed, bins)
  now = tonumber(now)
  for i, span in ipairs(STATS_SPANS) do
    local key = base .. ':stats:' .. span[1] .. ':' .. math.floor(now / span[2])
    local n = math.floor((now % span[2]) / span[3])
    -- A new field may be a new key: it gets its time to live (at most once a second).
    if redis.call('HINCRBY', key, n .. 's', succeeded) == succeeded then
      redis.call('PEXPIRE', key, span[4])
    end
    if failed > 0 then
      redis.call('HINCRBY', key, n .. 'f', failed)
    end
    if i == 1 and bins then
      for bin, count in pairs(bins) do
        redis.call('HINCRBY', key, bin, count)
      end
    end
  end
end

-- Deletes what only a running attempt has (its lease, its start, its worker: the attempt log
-- keeps the last two) as the task ends, before the end's fields are written, and `updated`: an
-- ended record's last change is its `finished` (record.rs, `UPDATED`). A record of up to
-- 16 fields keeps the hash table Redis made for 16; a 17th doubles it, and the table a record
-- was moving from stays beside the new one while nothing touches the record, for the whole
-- retention (docs/benchmark-notes.md, twenty-ninth step). The caller's `...` names more fields
-- the end drops in the same command: a success's progress, an earlier attempt's error and next
-- run, a cancel (a field kept empty costs what a full one does, thirtieth step). `end_told`
-- keeps the worker, for an end whose record tells its attempt rather than the attempt log
-- (finish.lua's `told`).
local function end_told(task, ...)
  redis.call('HDEL', task, 'lease', 'attempt_started', 'updated', ...)
end
local function end_running(task, ...)
  end_told(task, 'worker', ...)
end

-- Logs attempt `attempt` of `task`, which stopped running with `outcome` at `now`: its start and
-- worker are read from the record, before the end deletes them.
local function log_stopped(task, attempt, outcome, now)
  local stopped = redis.call('HMGET', task, 'attempt_started', 'worker')
  log_attempt(task, attempt, outcome, stopped[1], now, stopped[2], '')
end

-- Task `id` ended: its record, payload and idempotency key (`idem`, '' for none) are kept `keep`
-- ms from `now` (the caller counts the end in the tally of ends), its payload `payload_keep` ms
-- when given (a succeeded task's, `--payload-retention`: 0 deletes it now). A payload `in_record`
-- (a small one, enqueue.lua) goes with the record. A shared payload (`ref`) counts its open tasks
-- in `payload-refs:{ref}` and gets its TTL when the last of them ends: the latest end plus
-- retention of any of them.
local function keep_after_end(base, id, ref, idem, keep, now, in_record, payload_keep)
  redis.call('PEXPIRE', base .. ':task:' .. id, keep)
  if idem and idem ~= '' then
    redis.call('PEXPIRE', idem, keep)
  end
  payload_keep = payload_keep or keep
  if not ref or ref == '' then
    if not in_record then
      redis.call('PEXPIRE', base .. ':payload:' .. id, payload_keep)
    end
    return
  end
  local refs = base .. ':payload-refs:' .. ref
  local keep_until = tonumber(now) + tonumber(payload_keep)
  local open = redis.call('HINCRBY', refs, 'open', -1)
  local latest = tonumber(redis.call('HGET', refs, 'until') or '0') or 0
  if keep_until > latest then
    latest = keep_until
    redis.call('HSET', refs, 'until', latest)
  end
  if open <= 0 then
    redis.call('PEXPIREAT', base .. ':payload:' .. ref, latest)
    redis.call('PEXPIREAT', refs, latest)
  end
end

-- Task `id` waits again (a dead letter requeued): it keeps its record, payload and idempotency
-- key until it ends again.
local function keep_until_end(base, id, ref, idem)
  redis.call('PERSIST', base .. ':task:' .. id)
  if idem and idem ~= '' then
    redis.call('PERSIST', idem)
  end
  if not ref or ref == '' then
    redis.call('PERSIST', base .. ':payload:' .. id)
    return
  end
  local refs = base .. ':payload-refs:' .. ref
  redis.call('HINCRBY', refs, 'open', 1)
  redis.call('PERSIST', refs)
  redis.call('PERSIST', base .. ':payload:' .. ref)
end

-- Ends waiting task `id` as expired (its `expires` time passed before an attempt could start): a
-- dead letter with reason `expired`, kept `dead_keep` ms, and its `failed` event.
local function expire_task(base, id, now, dead_keep, events, maxlen)
  local task = base .. ':task:' .. id
  local f = redis.call('HMGET', task, 'kind', 'attempts', 'priority', 'options', 'payload')
  local options = options_of(task, f[4])
  local err = 'the task expired before an attempt could start'
  -- A task given back by its holder (release.lua) or retrying may still hold what its attempts
  -- left.
  end_running(task, 'cancel', 'next_run')
  redis.call('HSET', task, 'status', 'failed', 'finished', now, 'error', err,
    'dead_reason', 'expired')
  leave_waiting(base, base .. ':delayed', (f[3] or 'n') .. ':' .. id, f[1])
  leave_waiting(base, base .. ':retrying', (f[3] or 'n') .. ':' .. id, f[1])
  add_dead(base, base .. ':dead', id, f[1], now, dead_keep)
  keep_after_end(base, id, options.payload_ref, options.idem, dead_keep, now, f[5] ~= false)
  count_ends(base, now, 1)
  record_stats(base, now, 0, 1, nil)
  if options.session then
    leave_session(base, base .. ':session:' .. options.session, id)
  end
  emit_event(events, maxlen, base, 'failed', id, f[1], 'failed', f[2], '', err, now)
end
