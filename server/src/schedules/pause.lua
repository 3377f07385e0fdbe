-- Pauses or resumes a schedule. Resuming counts ticks from now: those of the pause never run.
-- KEYS[1]: the schedule's hash.
-- ARGV[1]: paused (0 or 1); ARGV[2]: now (ms).
-- Returns 0 if there is no such schedule, else 1.
local key = KEYS[1]
if redis.call('HEXISTS', key, 'spec') == 0 then
  return 0
end
redis.call('HSET', key, 'paused', ARGV[1])
if ARGV[1] == '0' then
  local last = tonumber(redis.call('HGET', key, 'last_tick') or '0')
  if tonumber(ARGV[2]) > last then
    redis.call('HSET', key, 'last_tick', ARGV[2])
  end
end
return 1
