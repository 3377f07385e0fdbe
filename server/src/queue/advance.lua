-- A session task has ended: take it out of its session and queue the next one.
-- KEYS: session list, ready
-- ARGV: task id
if redis.call('LINDEX', KEYS[1], 0) == ARGV[1] then
  redis.call('LPOP', KEYS[1])
  local next = redis.call('LINDEX', KEYS[1], 0)
  if next then
    redis.call('XADD', KEYS[2], '*', 'task', next)
  end
else
  redis.call('LREM', KEYS[1], 0, ARGV[1])
end
return 1
