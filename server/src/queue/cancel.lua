-- Cancels a task: at once when it waits, by flagging it when it runs.
-- KEYS: task, delayed, events, payload, session list, ready, idempotency key
-- ARGV: now ms, task id, events maxlen, retention ms, session ('' for none),
--       has idempotency key (1|0)
-- Returns 'missing', 'cancelled', 'cancelling', or 'finished:' and the status it already had.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return 'missing'
end
if status == 'queued' or status == 'scheduled' or status == 'retrying' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'updated', ARGV[1], 'finished', ARGV[1])
  local priority = redis.call('HGET', KEYS[1], 'priority') or 'n'
  redis.call('ZREM', KEYS[2], priority .. ':' .. ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  redis.call('PEXPIRE', KEYS[4], ARGV[4])
  if ARGV[6] == '1' then
    redis.call('PEXPIRE', KEYS[7], ARGV[4])
  end
  if ARGV[5] ~= '' then
    leave_session(KEYS[5], KEYS[6], ARGV[2])
  end
  local f = redis.call('HMGET', KEYS[1], 'kind', 'attempts')
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'event', 'cancelled', 'task', ARGV[2],
    'kind', f[1], 'status', 'cancelled', 'attempt', f[2], 'progress', '', 'error', '', 'at', ARGV[1])
  return 'cancelled'
end
if status == 'running' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
  return 'cancelling'
end
return 'finished:' .. status
