-- Records a tick as dealt with (run, or skipped), and the run it started.
-- KEYS[1]: the schedule's hash.
-- ARGV[1]: the generation the tick was computed under, or '' for a run started by hand (which
--          moves no tick); ARGV[2]: the tick (ms); ARGV[3]: the task it started, or '' if none.
-- Returns 0 if the schedule changed or went meanwhile (nothing recorded), else 1.
local key = KEYS[1]
if redis.call('HEXISTS', key, 'spec') == 0 then
  return 0
end
local tick = tonumber(ARGV[2])
if ARGV[1] ~= '' then
  if redis.call('HGET', key, 'generation') ~= ARGV[1] then
    return 0
  end
  if tick > tonumber(redis.call('HGET', key, 'last_tick') or '0') then
    redis.call('HSET', key, 'last_tick', ARGV[2])
  end
end
if ARGV[3] ~= '' and tick >= tonumber(redis.call('HGET', key, 'run_tick') or '0') then
  local manual = '0'
  if ARGV[1] == '' then
    manual = '1'
  end
  redis.call('HSET', key, 'run_tick', ARGV[2], 'run_task', ARGV[3], 'run_manual', manual)
end
return 1
