-- Moves due delayed tasks onto the ready stream.
-- KEYS: delayed, ready
-- ARGV: now ms, most to move
-- Returns how many moved.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(ids) do
  redis.call('XADD', KEYS[2], '*', 'task', id)
end
if #ids > 0 then
  redis.call('ZREM', KEYS[1], unpack(ids))
end
return #ids
