-- Takes the lease on a task just read from the ready stream (or reclaimed from a dead holder).
-- KEYS: task, ready, events, payload
-- ARGV: entry id, group, lease token, now ms, task id, events maxlen
-- Returns {'drop'} when the task is gone or finished (its entry is dropped), {'cancelled',
-- session} when it was cancelled while a dead holder ran it, else
-- {'run', attempt, kind, max_attempts, timeout_ms, payload_type, session, has payload (1|0),
-- payload, idempotency key}: the payload comes with the lease, saving the worker a round trip.
local status = redis.call('HGET', KEYS[1], 'status')
if (not status) or status == 'succeeded' or status == 'failed' or status == 'cancelled' then
  redis.call('XACK', KEYS[2], ARGV[2], ARGV[1])
  redis.call('XDEL', KEYS[2], ARGV[1])
  return {'drop'}
end
if redis.call('HGET', KEYS[1], 'cancel') == '1' then
  -- Cancelled while its previous holder ran it, and that holder died: it ends here.
  redis.call('XACK', KEYS[2], ARGV[2], ARGV[1])
  redis.call('XDEL', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[1], 'lease', 'entry', 'cancel')
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'updated', ARGV[4], 'finished', ARGV[4])
  local f = redis.call('HMGET', KEYS[1], 'kind', 'attempts')
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'event', 'cancelled', 'task', ARGV[5],
    'kind', f[1], 'status', 'cancelled', 'attempt', f[2], 'progress', '', 'error', '', 'at', ARGV[4])
  return {'cancelled', redis.call('HGET', KEYS[1], 'session') or ''}
end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'status', 'running', 'lease', ARGV[3], 'entry', ARGV[1],
  'updated', ARGV[4], 'progress', '')
redis.call('HSETNX', KEYS[1], 'started', ARGV[4])
local kind = redis.call('HGET', KEYS[1], 'kind')
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'event', 'running', 'task', ARGV[5],
  'kind', kind, 'status', 'running', 'attempt', attempt, 'progress', '', 'error', '', 'at', ARGV[4])
local f = redis.call('HMGET', KEYS[1], 'max_attempts', 'timeout_ms', 'payload_type', 'session', 'idem')
local payload = redis.call('GET', KEYS[4])
return {'run', tostring(attempt), kind, f[1] or '1', f[2] or '', f[3] or '', f[4] or '',
  payload and '1' or '0', payload or '', f[5] or ''}
