-- Renews a lease: resets the entry's idle time so no one reclaims it (for a lease shorter than
-- the queue's, to the idle time that makes it run out when it should).
-- KEYS: task, ready
-- ARGV: lease token, group, consumer, entry id, idle ms to set ('' or absent: 0)
-- Returns 0 when the lease is no longer ours, 2 when cancellation was asked for, else 1.
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[1] then
  return 0
end
local idle = tonumber(ARGV[5] or '') or 0
redis.call('XCLAIM', KEYS[2], ARGV[2], ARGV[3], 0, ARGV[4], 'IDLE', idle, 'JUSTID')
if redis.call('HGET', KEYS[1], 'cancel') == '1' then
  return 2
end
return 1
