-- Ends waiting tasks whose expiry has passed, then moves due delayed tasks and due retries onto
-- their kind's lane, at their priority (called by the queue's promoter once its look found
-- some due: `Queue::promote_due`).
-- KEYS: delayed, expiring, events, retrying
-- ARGV: now ms, most to move (and to expire), key base, dead-letter retention ms, events maxlen
-- Delayed and retrying members are `h:{id}`, `n:{id}` or `l:{id}`; `expiring` holds ids by
-- expiry ms (a running task's id is dropped from it: once started, it runs; should it wait for a
-- retry, the claim that would start it checks the expiry again).
-- Returns how many tasks moved or expired (the most of any one kind).
local expiring = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(expiring) do
  local status = redis.call('HGET', ARGV[3] .. ':task:' .. id, 'status')
  if status == 'queued' or status == 'scheduled' or status == 'retrying' then
    expire_task(ARGV[3], id, ARGV[1], ARGV[4], KEYS[3], ARGV[5])
  end
end
if #expiring > 0 then
  redis.call('ZREM', KEYS[2], unpack(expiring))
end
local moved = #expiring
for _, waiting in ipairs({KEYS[1], KEYS[4]}) do
  local members = redis.call('ZRANGEBYSCORE', waiting, '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
  -- Each kind's tasks that leave the set, counted out of it once per kind.
  local left = {}
  for _, member in ipairs(members) do
    local tag, id = string.match(member, '^(%a):(.+)$')
    id = id or member
    -- A task whose record is gone (erased) has nothing left to run.
    local kind = redis.call('HGET', ARGV[3] .. ':task:' .. id, 'kind')
    if kind then
      queue_on_lane(ARGV[3], kind, TAG_INDEX[tag] or 2, id)
      left[kind] = (left[kind] or 0) + 1
    end
  end
  if #members > 0 then
    -- Read in this script, so every one of them is there to remove.
    redis.call('ZREM', waiting, unpack(members))
    for kind, n in pairs(left) do
      count_waiting(ARGV[3], kind, waiting_state(waiting), -n)
    end
  end
  moved = math.max(moved, #members)
end
return moved
