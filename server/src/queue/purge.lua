-- Deletes a dead letter: its record, payload and result. A payload shared with other tasks (a
-- topic message's) stays, to expire when the last of them does.
-- KEYS: task, dead, payload, result, index, idempotency key
-- ARGV: task id, key base
-- Returns 1 when deleted, 0 when it is not a dead letter.
local f = redis.call('HMGET', KEYS[1], 'kind', 'options')
if not remove_dead(ARGV[2], KEYS[2], ARGV[1], f[1]) then
  return 0
end
if options_of(KEYS[1], f[2]).payload_ref then
  redis.call('DEL', KEYS[1], KEYS[4], KEYS[6])
else
  redis.call('DEL', KEYS[1], KEYS[3], KEYS[4], KEYS[6])
end
redis.call('ZREM', KEYS[5], ARGV[1])
return 1
