-- Queues a task of an ordered session: it waits in the session's list, and only the list's head
-- is on the ready stream, so a session runs one task at a time, in order.
-- KEYS: session list, ready
-- ARGV: task id
redis.call('RPUSH', KEYS[1], ARGV[1])
if redis.call('LLEN', KEYS[1]) == 1 then
  redis.call('XADD', KEYS[2], '*', 'task', ARGV[1])
end
return 1
