-- Creates or replaces a schedule, unless it is unchanged. A change starts a new generation, whose
-- ticks count from now: no tick of the old definition runs once this returns.
-- KEYS[1]: the schedule's hash.
-- ARGV[1]: spec (JSON); ARGV[2]: paused (0 or 1); ARGV[3]: now (ms).
-- Returns 0 unchanged, 1 created, 2 replaced.
local key = KEYS[1]
local current = redis.call('HGET', key, 'spec')
if current == ARGV[1] then
  return 0
end
redis.call('HINCRBY', key, 'generation', 1)
redis.call('HSET', key, 'spec', ARGV[1], 'paused', ARGV[2])
local last = tonumber(redis.call('HGET', key, 'last_tick') or '0')
if tonumber(ARGV[3]) > last then
  redis.call('HSET', key, 'last_tick', ARGV[3])
end
if current then
  return 2
end
return 1
