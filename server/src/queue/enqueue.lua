-- Queues new tasks in groups, each group all or none: stores each record and payload, queues its
-- id (on its session, in the delayed set, or on its kind's lane at its priority), indexes it and
-- appends its event. Nothing a waiting task owns has a TTL: retention counts from its end
-- (ends.lua). A queue with a `max_depth` refuses a group that would take the waiting tasks past
-- it. (The groups are submissions that arrived together, sent in one call: queue/enqueue.rs.)
-- KEYS: delayed, retrying, index, expiring, events, settings
-- ARGV: key base, group, events maxlen, then for each group: its number of tasks, then 13 for
--       each task: id, created ms, kind, due ms ('' for now), priority tag (h|n|l), its options
--       (the record's `options`, record.rs), session (''), idempotency key (''), expires ms (''),
--       open tasks of a shared payload (its owner only, ''), where the payload goes ('record': a
--       small one, into the task's record, field `payload`; 'here': the payload bytes argument,
--       under a key of its own; 'staged': at `base:staged:{id}`, set before this script, which
--       renames it; 'shared': under the payload ref its options name), traceparent (''), payload
--       bytes
-- Returns, per group, 1 when stored, or {tasks waiting, max_depth} when refused (nothing of it
-- stored).
-- Most tasks are not stored by this script but by plain commands that write the same
-- (`Queue::enqueue_plain` and `Queue::new_record`, queue/enqueue.rs): a change to what a task's
-- enqueue writes is made in both, and a unit test compares them.
local base, group, maxlen = ARGV[1], ARGV[2], ARGV[3]
local FIELDS = 13
local max_depth = tonumber(redis.call('HGET', KEYS[6], 'max_depth'))
local waiting = max_depth and waiting_tasks(all_ready_streams(base), KEYS[1], KEYS[2], group)

-- The ids stored, as ZADD's score-member pairs: indexed by one ZADD at the end (a command per
-- call rather than per task).
local indexed = {}

-- Stores the task whose 13 arguments start at ARGV[a].
local function store(a)
  local id, created, kind, due, priority = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local session, idem, expires = ARGV[a + 6], ARGV[a + 7], ARGV[a + 8]
  local payload = base .. ':payload:' .. id
  local source = ARGV[a + 10]
  if source == 'here' then
    redis.call('SET', payload, ARGV[a + 12])
  elseif source == 'staged' then
    redis.call('RENAME', base .. ':staged:' .. id, payload)
    redis.call('PERSIST', payload)
  end
  if ARGV[a + 9] ~= '' then
    redis.call('HSET', base .. ':payload-refs:' .. id, 'open', ARGV[a + 9])
  end
  if expires ~= '' then
    redis.call('ZADD', KEYS[4], expires, id)
  end
  if idem ~= '' then
    -- Claimed with a short TTL in case this script never runs; the task's own from now.
    redis.call('PERSIST', idem)
  end
  local status = due == '' and 'queued' or 'scheduled'
  local task = base .. ':task:' .. id
  -- The fields beyond the ones every task has, for the record's one HSET: a trace context, a
  -- priority but the normal one, and a small payload (whose presence tells the end, finish.lua,
  -- it has no key to expire). What readers take for granted stays out, a field being some 64
  -- bytes of memory for as long as the task is kept: `updated` (until a change, `created`), a
  -- normal priority and `attempts` (0 until a start writes it).
  local extra = {}
  if ARGV[a + 11] ~= '' then
    extra[#extra + 1] = 'traceparent'
    extra[#extra + 1] = ARGV[a + 11]
  end
  if priority ~= 'n' then
    extra[#extra + 1] = 'priority'
    extra[#extra + 1] = priority
  end
  if source == 'record' then
    extra[#extra + 1] = 'payload'
    extra[#extra + 1] = ARGV[a + 12]
  end
  redis.call('HSET', task, 'kind', kind, 'status', status, 'created', created, 'options', ARGV[a + 5],
    unpack(extra))
  indexed[#indexed + 1] = 0
  indexed[#indexed + 1] = id
  if session ~= '' then
    join_session(base, base .. ':session:' .. session, kind, id)
  elseif due ~= '' then
    enter_waiting(base, KEYS[1], due, priority .. ':' .. id, kind)
  else
    queue_on_lane(base, kind, TAG_INDEX[priority] or 2, id)
  end
  emit_event(KEYS[5], maxlen, base, status, id, kind, status, '0', '', '', created)
end

local answers = {}
local a = 4
while a <= #ARGV do
  local count = tonumber(ARGV[a])
  local first, last = a + 1, a + count * FIELDS
  if max_depth and waiting + count > max_depth then
    for t = first, last, FIELDS do
      if ARGV[t + 10] == 'staged' then
        redis.call('DEL', base .. ':staged:' .. ARGV[t])
      end
    end
    answers[#answers + 1] = {waiting, max_depth}
  else
    for t = first, last, FIELDS do
      store(t)
    end
    if waiting then
      waiting = waiting + count
    end
    answers[#answers + 1] = 1
  end
  a = last + 1
end
-- Lua's unpack takes a few thousand values at most: a page of ids at a time.
for first = 1, #indexed, 1000 do
  redis.call('ZADD', KEYS[3], unpack(indexed, first, math.min(first + 999, #indexed)))
end
return answers
