-- Shared by the scripts that hand out leases (prepended to them, after session.lua and
-- ends.lua, when they are loaded). Task keys are built from `base`, the queue's key prefix: every key of a queue
-- shares its hash tag, so they live in one slot even on a cluster.

-- Entries of the ready streams are acknowledged, never deleted one by one: `settle` trims them in
-- bulk once the group is done with them. (XDEL cost more than anything else the finish did for a
-- task; a trim frees whole nodes of the stream at once.)

-- Payloads up to this size come with the lease; a larger one the worker reads with a plain GET,
-- as copying it through Lua costs Redis more than the worker's extra round trip.
local INLINE_PAYLOAD_MAX = 16384

-- Acknowledges `entries` of `stream` in one call, then trims every entry the group is done with:
-- those older than the oldest still pending or, with none pending, than the last handed out.
-- The trim is approximate: it frees whole nodes, leaving at most a node's worth behind.
local function settle(stream, group, entries)
  redis.call('XACK', stream, group, unpack(entries))
  local pending = redis.pcall('XPENDING', stream, group)
  if pending.err then
    -- The group is gone (someone deleted the stream): nothing of it to trim.
    return
  end
  local done_before = pending[2] or group_info(stream, group)['last-delivered-id']
  redis.call('XTRIM', stream, 'MINID', '~', done_before)
end

-- Takes the lease on ready entry `entry` (of `streams[s]`) for task `id`, with `token`.
-- Returns, for a task to run, these fields in this order (`Run` in queue/lease.rs names them;
-- a unit test compares the two):
-- run reply: run, id, stream, entry, token, attempt, kind, max_attempts, timeout_ms, payload_type, session, payload_is, payload, idempotency_key, payload_ref
-- `run` is the word 'run', `stream` the stream's index (1-3), `payload_is` 1 (here), 2 (large:
-- read it yourself) or 0 (gone): a small payload comes with the lease, saving the worker a round
-- trip; `payload_ref` names the task a shared payload is stored under. Returns
-- {'drop'} when the task is gone or finished (its entry is dropped), {'cancelled'} when it was
-- cancelled while a dead holder ran it, and {'expired'} when its expiry passed before this
-- attempt could start (it ends as a dead letter kept `dead_keep` ms).
local function take_lease(base, streams, s, entry, id, group, token, now, events, maxlen, dead_keep)
  local stream = streams[s]
  local task = base .. ':task:' .. id
  local f = {}
  if id ~= '' then
    f = redis.call('HMGET', task, 'status', 'cancel', 'attempts', 'started', 'kind', 'max_attempts',
      'timeout_ms', 'payload_type', 'session', 'idem', 'payload_bytes', 'expires', 'payload_ref')
  end
  local status = f[1]
  if (not status) or status == 'succeeded' or status == 'failed' or status == 'cancelled' then
    settle(stream, group, {entry})
    return {'drop'}
  end
  if f[2] == '1' then
    -- Cancelled while its previous holder ran it, and that holder died: it ends here.
    settle(stream, group, {entry})
    redis.call('HSET', task, 'status', 'cancelled', 'updated', now, 'finished', now, 'lease', '',
      'cancel', '')
    emit_event(events, maxlen, 'cancelled', id, f[5], 'cancelled', f[3], '', '', now)
    if f[9] and f[9] ~= '' then
      leave_session(base .. ':session:' .. f[9], streams[2], id)
    end
    return {'cancelled'}
  end
  local expires = tonumber(f[12])
  if expires and expires <= tonumber(now) then
    settle(stream, group, {entry})
    expire_task(base, id, now, dead_keep, events, maxlen)
    return {'expired'}
  end
  local attempt = tostring((tonumber(f[3]) or 0) + 1)
  redis.call('HSET', task, 'status', 'running', 'lease', token, 'updated', now,
    'progress', '', 'attempts', attempt, 'started', f[4] or now)
  emit_event(events, maxlen, 'running', id, f[5], 'running', attempt, '', '', now)
  local payload, has = nil, '2'
  if (tonumber(f[11]) or 0) <= INLINE_PAYLOAD_MAX then
    payload = redis.call('GET', payload_key(base, id, f[13]))
    has = payload and '1' or '0'
  end
  return {'run', id, tostring(s), entry, token, attempt, f[5], f[6] or '1', f[7] or '', f[8] or '',
    f[9] or '', has, payload or '', f[10] or '', f[13] or ''}
end

-- Reads up to `count` new entries, the most urgent stream first, takes their leases (tokens
-- `token_base:n`) and appends the replies to `replies`.
local function take_new(base, streams, group, consumer, count, token_base, now, events, maxlen,
    dead_keep, replies)
  for s = 1, #streams do
    if count <= 0 then
      break
    end
    local read = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count, 'STREAMS',
      streams[s], '>')
    if read then
      for _, e in ipairs(read[1][2]) do
        local id, fields = '', e[2]
        for i = 1, #fields, 2 do
          if fields[i] == 'task' then
            id = fields[i + 1]
          end
        end
        replies[#replies + 1] = take_lease(base, streams, s, e[1], id, group,
          token_base .. ':' .. #replies, now, events, maxlen, dead_keep)
        count = count - 1
      end
    end
  end
end
