-- Records a running task's progress, if the caller still holds its lease.
-- KEYS: task, events
-- ARGV: lease token, progress, now ms, task id, events maxlen, key base
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'progress', ARGV[2], 'updated', ARGV[3])
local f = redis.call('HMGET', KEYS[1], 'kind', 'attempts')
emit_event(KEYS[2], ARGV[5], ARGV[6], 'progress', ARGV[4], f[1], 'running', f[2], ARGV[2], '', ARGV[3])
return 1
