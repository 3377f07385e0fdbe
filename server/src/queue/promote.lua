-- Moves due delayed tasks onto the ready stream of their priority.
-- KEYS: delayed, ready-high, ready, ready-low
-- ARGV: now ms, most to move
-- Members are `h:{id}`, `n:{id}` or `l:{id}`. Returns how many moved.
local streams = {h = KEYS[2], n = KEYS[3], l = KEYS[4]}
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(members) do
  local tag, id = string.match(member, '^(%a):(.+)$')
  redis.call('XADD', streams[tag] or KEYS[3], '*', 'task', id or member)
end
if #members > 0 then
  redis.call('ZREM', KEYS[1], unpack(members))
end
return #members
