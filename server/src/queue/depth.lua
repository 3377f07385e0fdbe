-- How many tasks wait to run: the ready entries the group has not handed out yet (its lag; the
-- whole stream while it has no group, or when Redis cannot tell the lag), plus delayed tasks.
-- Acknowledged entries stay on a stream until a trim, so its length would count them too.
-- KEYS: ready-high, ready, ready-low, delayed
-- ARGV: group
local waiting = redis.call('ZCARD', KEYS[4])
for s = 1, 3 do
  if redis.call('EXISTS', KEYS[s]) == 1 then
    local group = group_info(KEYS[s], ARGV[1])
    waiting = waiting + ((group and group['lag']) or redis.call('XLEN', KEYS[s]))
  end
end
return waiting
