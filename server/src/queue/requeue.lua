-- Takes a task out of the dead letters and queues it again, attempts reset.
-- KEYS: task, dead, events, payload, ready-high, ready, ready-low, session list, idempotency key
-- ARGV: now ms, task id, events maxlen, retention ms, session ('' for none),
--       has idempotency key (1|0)
-- Returns 1 when requeued, 0 when it is not a dead letter (or has expired).
if redis.call('ZREM', KEYS[2], ARGV[2]) == 0 or redis.call('HGET', KEYS[1], 'status') ~= 'failed' then
  return 0
end
redis.call('HSET', KEYS[1], 'status', 'queued', 'attempts', 0, 'updated', ARGV[1], 'error', '',
  'progress', '')
redis.call('HDEL', KEYS[1], 'finished', 'dead_reason', 'next_run')
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[4], ARGV[4])
if ARGV[6] == '1' then
  redis.call('PEXPIRE', KEYS[9], ARGV[4])
end
if ARGV[5] ~= '' then
  -- Back at the end of its session, to run when the session's earlier tasks are done.
  redis.call('RPUSH', KEYS[8], ARGV[2])
  if redis.call('LLEN', KEYS[8]) == 1 then
    redis.call('XADD', KEYS[6], '*', 'task', ARGV[2])
  end
else
  local streams = {h = KEYS[5], n = KEYS[6], l = KEYS[7]}
  local priority = redis.call('HGET', KEYS[1], 'priority') or 'n'
  redis.call('XADD', streams[priority] or KEYS[6], '*', 'task', ARGV[2])
end
local kind = redis.call('HGET', KEYS[1], 'kind')
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'event', 'queued', 'task', ARGV[2],
  'kind', kind, 'status', 'queued', 'attempt', 0, 'progress', '', 'error', '', 'at', ARGV[1])
return 1
