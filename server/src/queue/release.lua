-- Hands a running task back to the queue unfinished (its worker is stopping): the attempt does
-- not count, and any worker may take it at once. A task whose cancellation was asked for ends
-- cancelled instead: its worker stopped, as asked.
-- KEYS: task, ready, events
-- ARGV: lease token, group, entry id, now ms, task id, events maxlen, key base, retention ms
-- Returns 1 when handed back (or cancelled), 0 when the lease was no longer held.
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[1] then
  return 0
end
local base, now, id = ARGV[7], ARGV[4], ARGV[5]
-- Acknowledged only: the finish script trims acknowledged entries in bulk.
redis.call('XACK', KEYS[2], ARGV[2], ARGV[3])
local f = redis.call('HMGET', KEYS[1], 'kind', 'attempts', 'cancel', 'worker', 'attempt_started')
if f[3] == '1' then
  local options = options_of(KEYS[1], redis.call('HGET', KEYS[1], 'options'))
  log_attempt(KEYS[1], f[2], 'cancelled', f[5], now, f[4], '')
  end_running(KEYS[1], 'cancel')
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished', now)
  keep_after_end(base, id, options.payload_ref, options.idem, ARGV[8], now)
  count_ends(base, now, 1)
  if options.session then
    leave_session(base, base .. ':session:' .. options.session, id)
  end
  emit_event(KEYS[3], ARGV[6], base, 'cancelled', id, f[1], 'cancelled', f[2], '', '', now)
  return 1
end
redis.call('HDEL', KEYS[1], 'lease', 'progress')
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', -1)
redis.call('HSET', KEYS[1], 'status', 'queued', 'updated', now)
redis.call('XADD', KEYS[2], '*', 'task', id)
mark_ready(base, f[1])
emit_event(KEYS[3], ARGV[6], base, 'queued', id, f[1], 'queued', attempts, '', '', now)
return 1
