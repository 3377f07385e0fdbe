-- Registers queue ARGV[1] (unless the registry holds ARGV[2] names already) and gives it a number
-- for life, the next free one from 1 (the default queue is 0): task ids carry it (queues.rs).
-- KEYS: the registry of names (a set), name -> number (a hash), number -> name (a hash)
-- Returns the queue's number, or 0 when the registry is full.
local number = redis.call('HGET', KEYS[2], ARGV[1])
if number then
  redis.call('SADD', KEYS[1], ARGV[1])
  return tonumber(number)
end
if redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[2]) then
  return 0
end
number = redis.call('HLEN', KEYS[2]) + 1
redis.call('HSET', KEYS[2], ARGV[1], number)
redis.call('HSET', KEYS[3], number, ARGV[1])
redis.call('SADD', KEYS[1], ARGV[1])
return number
