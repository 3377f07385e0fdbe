-- Hands a running task back to the queue unfinished (graceful shutdown past the grace period):
-- the attempt does not count, and any worker may take it at once.
-- KEYS: task, ready, events
-- ARGV: lease token, group, entry id, now ms, task id, events maxlen, key base
-- Returns 1 when handed back, 0 when the lease was no longer held.
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[1] then
  return 0
end
-- Acknowledged only: the finish script trims acknowledged entries in bulk.
redis.call('XACK', KEYS[2], ARGV[2], ARGV[3])
redis.call('HDEL', KEYS[1], 'lease')
redis.call('HINCRBY', KEYS[1], 'attempts', -1)
redis.call('HSET', KEYS[1], 'status', 'queued', 'updated', ARGV[4], 'progress', '')
redis.call('XADD', KEYS[2], '*', 'task', ARGV[5])
local f = redis.call('HMGET', KEYS[1], 'kind', 'attempts')
emit_event(KEYS[3], ARGV[6], ARGV[7], 'queued', ARGV[5], f[1], 'queued', f[2], '', '', ARGV[4])
return 1
