-- Drops listing-index entries whose task is gone (its retention ended), oldest first. Ids are
-- UUIDv7, so they sort by creation: only ids created before `horizon` can have ended and expired.
-- A cursor remembers where the last call stopped, so old tasks that still wait are stepped over
-- once, not read again on every call.
-- KEYS: index, cursor
-- ARGV: key base, horizon (an id prefix), most to check
-- Returns how many entries were dropped.
local from = redis.call('GET', KEYS[2])
from = from and ('(' .. from) or '-'
local ids = redis.call('ZRANGE', KEYS[1], from, '(' .. ARGV[2], 'BYLEX', 'LIMIT', 0, ARGV[3])
local gone = {}
for _, id in ipairs(ids) do
  if redis.call('EXISTS', ARGV[1] .. ':task:' .. id) == 0 then
    gone[#gone + 1] = id
  end
end
if #gone > 0 then
  redis.call('ZREM', KEYS[1], unpack(gone))
end
if #ids < tonumber(ARGV[3]) then
  redis.call('DEL', KEYS[2])
else
  redis.call('SET', KEYS[2], ids[#ids])
end
return #gone
