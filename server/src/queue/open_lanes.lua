-- Opens the lanes of the kinds a worker runs (its blocking read waits on their streams), and moves
-- the tasks on a queue's ready streams from before lanes (one set of streams for every kind,
-- `{base}:ready`…) onto their kinds' lanes, a batch at a time. A task that was running there
-- (its holder an older worker) is taken over as if its holder had died.
-- KEYS: the queue's lanes set, its ready-lanes set, then its ready streams from before lanes
--   (high, normal, low)
-- ARGV: key base, batch size, then the kinds to open lanes for
-- Returns how many old entries it moved; the caller calls again while that is the batch size.
local base, batch = ARGV[1], tonumber(ARGV[2])
for i = 3, #ARGV do
  ensure_lane(base, ARGV[i])
end
local moved = 0
for s = 1, 3 do
  local old = KEYS[2 + s]
  if moved < batch and redis.call('EXISTS', old) == 1 then
    local entries = redis.call('XRANGE', old, '-', '+', 'COUNT', batch - moved)
    for _, e in ipairs(entries) do
      local id, fields = nil, e[2]
      for i = 1, #fields, 2 do
        if fields[i] == 'task' then
          id = fields[i + 1]
        end
      end
      local f = id and redis.call('HMGET', base .. ':task:' .. id, 'kind', 'status') or {}
      if f[1] and (f[2] == 'queued' or f[2] == 'running') then
        queue_on_lane(base, f[1], s, id)
      end
      redis.call('XDEL', old, e[1])
    end
    moved = moved + #entries
    if redis.call('XLEN', old) == 0 then
      redis.call('DEL', old)
    end
  end
end
return moved
