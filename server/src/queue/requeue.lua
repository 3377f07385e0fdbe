-- Takes a task out of the dead letters and queues it again, its earlier run and expiry cleared
-- (someone asked for it to run): it keeps its record, payload and idempotency key until it ends.
-- KEYS: task, dead, events, session list, idempotency key
-- ARGV: now ms, task id, events maxlen, retention ms (unused), session ('' for none),
--       has idempotency key (1|0), key base
-- Returns 1 when requeued, 0 when it is not a dead letter (or has expired).
local kind = redis.call('HGET', KEYS[1], 'kind')
if not remove_dead(ARGV[7], KEYS[2], ARGV[2], kind) or redis.call('HGET', KEYS[1], 'status') ~= 'failed' then
  return 0
end
-- It starts over, as a task never run (an absent `attempts` reads as 0): its earlier run's end,
-- first start, wait mark, attempt log (`a:{attempt}`, ends.lua) and the worker of an attempt its
-- record told (finish.lua) go, so that what it shows tells of this run only. Its events told of the earlier one, and the audit log of the requeue.
local log = {}
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, 1, 2) == 'a:' then
    log[#log + 1] = field
  end
end
redis.call('HDEL', KEYS[1], 'attempts', 'finished', 'dead_reason', 'next_run', 'expires', 'cancel',
  'error', 'progress', 'started', 'waited', 'worker', unpack(log))
redis.call('HSET', KEYS[1], 'status', 'queued', 'updated', ARGV[1])
-- Its expiry goes with the rest: one of a record stored before the forty-second step was a field
-- of its own (deleted above).
local packed = redis.call('HGET', KEYS[1], 'options')
local options = options_of(KEYS[1], packed)
if packed and options.expires then
  options.expires = nil
  redis.call('HSET', KEYS[1], 'options', options_text(options))
end
keep_until_end(ARGV[7], ARGV[2], options.payload_ref, ARGV[6] == '1' and KEYS[5] or '')
if ARGV[5] ~= '' then
  -- Back at the end of its session, to run when the session's earlier tasks are done.
  join_session(ARGV[7], KEYS[4], kind, ARGV[2])
else
  local priority = redis.call('HGET', KEYS[1], 'priority') or 'n'
  queue_on_lane(ARGV[7], kind, TAG_INDEX[priority] or 2, ARGV[2])
end
emit_event(KEYS[3], ARGV[3], ARGV[7], 'queued', ARGV[2], kind, 'queued', '0', '', '', ARGV[1], true)
return 1
