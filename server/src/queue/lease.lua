-- Shared by the scripts that hand out leases (prepended to them, after session.lua, when they
-- are loaded). Task keys are built from `base`, the queue's key prefix: every key of a queue
-- shares its hash tag, so they live in one slot even on a cluster.

-- Takes the lease on ready entry `entry` (of `streams[s]`) for task `id`, with `token`.
-- Returns {'run', id, s, entry, token, attempt, kind, max_attempts, timeout_ms, payload_type,
-- session, has payload (1|0), payload, idempotency key}: the payload comes with the lease,
-- saving the worker a round trip. Returns {'drop'} when the task is gone or finished (its entry
-- is dropped), and {'cancelled'} when it was cancelled while a dead holder ran it.
local function take_lease(base, streams, s, entry, id, group, token, now, events, maxlen)
  local stream = streams[s]
  local task = base .. ':task:' .. id
  local status = id ~= '' and redis.call('HGET', task, 'status')
  if (not status) or status == 'succeeded' or status == 'failed' or status == 'cancelled' then
    redis.call('XACK', stream, group, entry)
    redis.call('XDEL', stream, entry)
    return {'drop'}
  end
  if redis.call('HGET', task, 'cancel') == '1' then
    -- Cancelled while its previous holder ran it, and that holder died: it ends here.
    redis.call('XACK', stream, group, entry)
    redis.call('XDEL', stream, entry)
    redis.call('HDEL', task, 'lease', 'entry', 'cancel')
    redis.call('HSET', task, 'status', 'cancelled', 'updated', now, 'finished', now)
    local f = redis.call('HMGET', task, 'kind', 'attempts', 'session')
    redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'event', 'cancelled', 'task', id,
      'kind', f[1], 'status', 'cancelled', 'attempt', f[2], 'progress', '', 'error', '', 'at', now)
    if f[3] and f[3] ~= '' then
      leave_session(base .. ':session:' .. f[3], streams[2], id)
    end
    return {'cancelled'}
  end
  local attempt = redis.call('HINCRBY', task, 'attempts', 1)
  redis.call('HSET', task, 'status', 'running', 'lease', token, 'entry', entry, 'updated', now,
    'progress', '')
  redis.call('HSETNX', task, 'started', now)
  local f = redis.call('HMGET', task, 'kind', 'max_attempts', 'timeout_ms', 'payload_type', 'session',
    'idem')
  redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'event', 'running', 'task', id,
    'kind', f[1], 'status', 'running', 'attempt', attempt, 'progress', '', 'error', '', 'at', now)
  local payload = redis.call('GET', base .. ':payload:' .. id)
  return {'run', id, tostring(s), entry, token, tostring(attempt), f[1], f[2] or '1', f[3] or '',
    f[4] or '', f[5] or '', payload and '1' or '0', payload or '', f[6] or ''}
end

-- Reads up to `count` new entries, the most urgent stream first, takes their leases (tokens
-- `token_base:n`) and appends the replies to `replies`.
local function take_new(base, streams, group, consumer, count, token_base, now, events, maxlen,
    replies)
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
          token_base .. ':' .. #replies, now, events, maxlen)
        count = count - 1
      end
    end
  end
end
