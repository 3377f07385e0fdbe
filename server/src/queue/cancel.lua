-- Cancels a task: at once when it waits, by flagging it when it runs.
-- KEYS: task, delayed, events, session list, idempotency key, retrying
-- ARGV: now ms, task id, events maxlen, retention ms, session ('' for none),
--       has idempotency key (1|0), key base
-- Returns 'missing', 'cancelled', 'cancelling', or 'finished:' and the status it already had.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return 'missing'
end
if status == 'queued' or status == 'scheduled' or status == 'retrying' then
  -- A retrying task still holds what its failed attempt left, and its next run.
  end_running(KEYS[1], 'next_run')
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished', ARGV[1])
  local f = redis.call('HMGET', KEYS[1], 'kind', 'attempts', 'priority', 'options')
  local member = (f[3] or 'n') .. ':' .. ARGV[2]
  leave_waiting(ARGV[7], KEYS[2], member, f[1])
  leave_waiting(ARGV[7], KEYS[6], member, f[1])
  local ref = options_of(KEYS[1], f[4]).payload_ref
  keep_after_end(ARGV[7], ARGV[2], ref, ARGV[6] == '1' and KEYS[5] or '', ARGV[4], ARGV[1])
  count_ends(ARGV[7], ARGV[1], 1)
  if ARGV[5] ~= '' then
    leave_session(ARGV[7], KEYS[4], ARGV[2])
  end
  emit_event(KEYS[3], ARGV[3], ARGV[7], 'cancelled', ARGV[2], f[1], 'cancelled', f[2], '', '', ARGV[1])
  return 'cancelled'
end
if status == 'running' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
  return 'cancelling'
end
return 'finished:' .. status
