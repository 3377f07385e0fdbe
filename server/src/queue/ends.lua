-- Shared by the scripts that end a task (prepended to them, after session.lua, when they are
-- loaded). Retention counts from a task's end, never from its submission: a waiting or running
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
-- tasks counts them once. The first end of a second drops the seconds older than two minutes, so
-- the tally stays small.
local function count_ends(base, now, n)
  local tally = base .. ':ended'
  local second = math.floor(tonumber(now) / 1000)
  if redis.call('HINCRBY', tally, second, n) == n and redis.call('HLEN', tally) > 120 then
    for _, field in ipairs(redis.call('HKEYS', tally)) do
      if (tonumber(field) or 0) < second - 120 then
        redis.call('HDEL', tally, field)
      end
    end
  end
end

-- Task `id` ended: its record, payload and idempotency key (`idem`, '' for none) are kept `keep`
-- ms from `now` (the caller counts the end, `count_ends`). A shared payload (`ref`) counts its open tasks in `payload-refs:{ref}` and gets
-- its TTL when the last of them ends: the latest end plus retention of any of them.
local function keep_after_end(base, id, ref, idem, keep, now)
  redis.call('PEXPIRE', base .. ':task:' .. id, keep)
  if idem and idem ~= '' then
    redis.call('PEXPIRE', idem, keep)
  end
  if not ref or ref == '' then
    redis.call('PEXPIRE', base .. ':payload:' .. id, keep)
    return
  end
  local refs = base .. ':payload-refs:' .. ref
  local keep_until = tonumber(now) + tonumber(keep)
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
  local f = redis.call('HMGET', task, 'kind', 'attempts', 'priority', 'session', 'idem',
    'payload_ref')
  local err = 'the task expired before an attempt could start'
  redis.call('HSET', task, 'status', 'failed', 'updated', now, 'finished', now, 'error', err,
    'dead_reason', 'expired', 'lease', '', 'cancel', '', 'next_run', '')
  redis.call('ZREM', base .. ':delayed', (f[3] or 'n') .. ':' .. id)
  redis.call('ZREM', base .. ':retrying', (f[3] or 'n') .. ':' .. id)
  redis.call('ZADD', base .. ':dead', now, id)
  keep_after_end(base, id, f[6], f[5], dead_keep, now)
  count_ends(base, now, 1)
  if f[4] and f[4] ~= '' then
    leave_session(base, base .. ':session:' .. f[4], id)
  end
  emit_event(events, maxlen, base, 'failed', id, f[1], 'failed', f[2], '', err, now)
end
