-- Ends waiting tasks whose expiry has passed, then moves due delayed tasks and due retries onto
-- the ready stream of their priority.
-- KEYS: delayed, ready-high, ready, ready-low, expiring, events, retrying
-- ARGV: now ms, most to move (and to expire), key base, dead-letter retention ms, events maxlen
-- Delayed and retrying members are `h:{id}`, `n:{id}` or `l:{id}`; `expiring` holds ids by
-- expiry ms (a running task's id is dropped from it: once started, it runs; should it wait for a
-- retry, the claim that would start it checks the expiry again).
-- Returns how many tasks moved or expired (the most of any one kind).
local expiring = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(expiring) do
  local status = redis.call('HGET', ARGV[3] .. ':task:' .. id, 'status')
  if status == 'queued' or status == 'scheduled' or status == 'retrying' then
    expire_task(ARGV[3], id, ARGV[1], ARGV[4], KEYS[6], ARGV[5])
  end
end
if #expiring > 0 then
  redis.call('ZREM', KEYS[5], unpack(expiring))
end
local streams = {h = KEYS[2], n = KEYS[3], l = KEYS[4]}
local moved = #expiring
for _, waiting in ipairs({KEYS[1], KEYS[7]}) do
  local members = redis.call('ZRANGEBYSCORE', waiting, '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
  for _, member in ipairs(members) do
    local tag, id = string.match(member, '^(%a):(.+)$')
    redis.call('XADD', streams[tag] or KEYS[3], '*', 'task', id or member)
  end
  if #members > 0 then
    redis.call('ZREM', waiting, unpack(members))
  end
  moved = math.max(moved, #members)
end
return moved
