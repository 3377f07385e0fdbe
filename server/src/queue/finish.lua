-- Ends attempts whose caller still holds the lease (a late holder changes nothing), then takes
-- leases on up to `want` new entries for the slots those attempts free: one round trip both ends
-- a batch of attempts and starts the next.
-- KEYS: ready-high, ready, ready-low, events, delayed, dead
-- ARGV: key base, group, consumer, token base, now ms, events maxlen, retention ms, dead-letter
--       retention ms, want, then 12 for each attempt: task id, stream index (1-3), entry id,
--       lease token, outcome (succeeded|retrying|failed|cancelled), error, result type,
--       due ms, result bytes, dead-letter reason, session ('' for none), idempotency key ('')
-- Returns {applied (1, or 0 when the lease was lost) per attempt, take_lease replies}.
local base, group, now, maxlen = ARGV[1], ARGV[2], ARGV[5], ARGV[6]
local streams = {KEYS[1], KEYS[2], KEYS[3]}
local applied = {}
for a = 10, #ARGV, 12 do
  local id, stream, entry, outcome, err = ARGV[a], streams[tonumber(ARGV[a + 1])], ARGV[a + 2],
    ARGV[a + 4], ARGV[a + 5]
  local task = base .. ':task:' .. id
  local f = redis.call('HMGET', task, 'lease', 'kind', 'attempts', 'progress', 'priority')
  if f[1] ~= ARGV[a + 3] then
    applied[#applied + 1] = 0
  else
    redis.call('XACK', stream, group, entry)
    redis.call('XDEL', stream, entry)
    local progress = f[4] or ''
    if outcome == 'retrying' then
      local due = ARGV[a + 7]
      redis.call('HDEL', task, 'lease', 'entry', 'cancel')
      redis.call('HSET', task, 'status', outcome, 'updated', now, 'error', err, 'next_run', due)
      redis.call('ZADD', KEYS[5], due, (f[5] or 'n') .. ':' .. id)
    else
      redis.call('HDEL', task, 'lease', 'entry', 'cancel', 'next_run')
      -- Retention counts from the end, so a result is kept as long as promised; dead letters
      -- are kept longer, for someone to look at.
      local keep = ARGV[7]
      if outcome == 'succeeded' then
        local result = ARGV[a + 8]
        progress = '100'
        redis.call('HSET', task, 'status', outcome, 'updated', now, 'error', err, 'finished', now,
          'progress', progress, 'result_type', ARGV[a + 6], 'result_bytes', #result)
        redis.call('SET', base .. ':result:' .. id, result, 'PX', keep)
      else
        redis.call('HSET', task, 'status', outcome, 'updated', now, 'error', err, 'finished', now)
        if outcome == 'failed' then
          keep = ARGV[8]
          redis.call('HSET', task, 'dead_reason', ARGV[a + 9])
          redis.call('ZADD', KEYS[6], now, id)
          redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', '(' .. (tonumber(now) - tonumber(keep)))
        end
      end
      redis.call('PEXPIRE', task, keep)
      redis.call('PEXPIRE', base .. ':payload:' .. id, keep)
      if ARGV[a + 11] ~= '' then
        -- The idempotency key lives as long as the task it stands for.
        redis.call('PEXPIRE', ARGV[a + 11], keep)
      end
      if ARGV[a + 10] ~= '' then
        leave_session(base .. ':session:' .. ARGV[a + 10], streams[2], id)
      end
    end
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', maxlen, '*', 'event', outcome, 'task', id,
      'kind', f[2], 'status', outcome, 'attempt', f[3], 'progress', progress, 'error', err,
      'at', now)
    applied[#applied + 1] = 1
  end
end
local leases = {}
take_new(base, streams, group, ARGV[3], tonumber(ARGV[9]), ARGV[4], now, KEYS[4], maxlen, leases)
return {applied, leases}
