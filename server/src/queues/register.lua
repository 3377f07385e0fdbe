-- Adds queue ARGV[1] to the registry of queue names, unless it holds ARGV[2] names already.
-- KEYS: the registry (a set)
-- Returns 1 when the name is registered (now or before), 0 when the registry is full.
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then
  return 1
end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('SADD', KEYS[1], ARGV[1])
return 1
