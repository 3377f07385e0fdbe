-- Ends an attempt, if the caller still holds the lease (a late holder changes nothing).
-- KEYS: task, ready, events, result, payload, delayed, dead, session list, idempotency key
-- ARGV: lease token, group, entry id, outcome (succeeded|retrying|failed|cancelled), now ms,
--       task id, events maxlen, retention ms, error, result type, due ms, result bytes,
--       dead-letter reason, dead-letter retention ms, session ('' for none),
--       has idempotency key (1|0)
-- Returns 1 when applied, 0 when the lease was lost.
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[1] then
  return 0
end
redis.call('XACK', KEYS[2], ARGV[2], ARGV[3])
redis.call('XDEL', KEYS[2], ARGV[3])
redis.call('HDEL', KEYS[1], 'lease', 'entry', 'cancel')
local outcome = ARGV[4]
redis.call('HSET', KEYS[1], 'status', outcome, 'updated', ARGV[5], 'error', ARGV[9])
if outcome == 'retrying' then
  redis.call('HSET', KEYS[1], 'next_run', ARGV[11])
  local priority = redis.call('HGET', KEYS[1], 'priority') or 'n'
  redis.call('ZADD', KEYS[6], ARGV[11], priority .. ':' .. ARGV[6])
else
  redis.call('HSET', KEYS[1], 'finished', ARGV[5])
  redis.call('HDEL', KEYS[1], 'next_run')
  -- Retention counts from the end, so a result is kept as long as promised; dead letters
  -- are kept longer, for someone to look at.
  local keep = ARGV[8]
  if outcome == 'succeeded' then
    redis.call('HSET', KEYS[1], 'progress', 100, 'result_type', ARGV[10], 'result_bytes', #ARGV[12])
    redis.call('SET', KEYS[4], ARGV[12], 'PX', ARGV[8])
  elseif outcome == 'failed' then
    keep = ARGV[14]
    redis.call('HSET', KEYS[1], 'dead_reason', ARGV[13])
    redis.call('ZADD', KEYS[7], ARGV[5], ARGV[6])
    redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', '(' .. (tonumber(ARGV[5]) - tonumber(ARGV[14])))
  end
  redis.call('PEXPIRE', KEYS[1], keep)
  redis.call('PEXPIRE', KEYS[5], keep)
  if ARGV[16] == '1' then
    -- The idempotency key lives as long as the task it stands for.
    redis.call('PEXPIRE', KEYS[9], keep)
  end
  if ARGV[15] ~= '' then
    leave_session(KEYS[8], KEYS[2], ARGV[6])
  end
end
local f = redis.call('HMGET', KEYS[1], 'kind', 'attempts', 'progress')
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*', 'event', outcome, 'task', ARGV[6],
  'kind', f[1], 'status', outcome, 'attempt', f[2], 'progress', f[3] or '', 'error', ARGV[9],
  'at', ARGV[5])
return 1
