-- Shared by every script that queues, reads or counts ready tasks (a helper of the library,
-- after events.lua: library.rs). Each kind has a lane in its queue: ready streams of its
-- own, one per priority, so a worker reads only the kinds it runs and a task of a kind nobody
-- runs waits on its lane, held back by no one and held by no one. A queue's `lanes` set names
-- its kinds that have one; its `ready-lanes` set those whose lane may hold tasks not handed out
-- yet (a claim reads only those, and drops a lane it finds empty). Their streams share the
-- queue's hash tag.

-- The consumer group of every lane (GROUP in queue.rs; a unit test compares them).
local LANE_GROUP = 'workers'
-- Stream s (1 high, 2 normal, 3 low) of a lane is `{base}:{suffix}:{kind}`.
local LANE_SUFFIX = {'ready-high', 'ready', 'ready-low'}
-- A priority tag (delayed and retrying members, records) to its stream's place.
local TAG_INDEX = {h = 1, n = 2, l = 3}

local function lane_stream(base, kind, s)
  return base .. ':' .. LANE_SUFFIX[s] .. ':' .. kind
end

-- The lanes this call has made sure of, and marked ready: each is done once per call (set afresh
-- for each, call.lua).
local ensured, marked

-- Makes `kind`'s lane in the queue if it has none: its three streams and their group.
local function ensure_lane(base, kind)
  if ensured[kind] then
    return
  end
  ensured[kind] = true
  if redis.call('SADD', base .. ':lanes', kind) == 1 then
    for s = 1, 3 do
      local made = redis.pcall('XGROUP', 'CREATE', lane_stream(base, kind, s), LANE_GROUP, '0',
        'MKSTREAM')
      if type(made) == 'table' and made.err and not string.find(made.err, 'BUSYGROUP') then
        return redis.error_reply(made.err)
      end
    end
  end
end

-- Every kind with a lane in the queue.
local function lane_kinds(base)
  return redis.call('SMEMBERS', base .. ':lanes')
end

-- `kind`'s lane has a task not handed out yet: claims are to read it.
local function mark_ready(base, kind)
  if not marked[kind] then
    marked[kind] = true
    redis.call('SADD', base .. ':ready-lanes', kind)
  end
end

-- `kind`'s lane was read to its end: claims may leave it alone until a task is queued on it.
local function unmark_ready(base, kind)
  marked[kind] = nil
  redis.call('SREM', base .. ':ready-lanes', kind)
end

-- Every ready stream of the queue, lane by lane.
local function all_ready_streams(base)
  local streams = {}
  for _, kind in ipairs(lane_kinds(base)) do
    for s = 1, 3 do
      streams[#streams + 1] = lane_stream(base, kind, s)
    end
  end
  return streams
end

-- Queues task `id` (of `kind`) on stream `s` of its lane.
local function queue_on_lane(base, kind, s, id)
  ensure_lane(base, kind)
  redis.call('XADD', lane_stream(base, kind, s), '*', 'task', id)
  mark_ready(base, kind)
end
