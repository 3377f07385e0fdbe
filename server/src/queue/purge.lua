-- Deletes a dead letter: its record, payload and result. A payload shared with other tasks (a
-- topic message's) stays, to expire when the last of them does.
-- KEYS: task, dead, payload, result, index, idempotency key
-- ARGV: task id
-- Returns 1 when deleted, 0 when it is not a dead letter.
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then
  return 0
end
local ref = redis.call('HGET', KEYS[1], 'payload_ref')
if ref and ref ~= '' then
  redis.call('DEL', KEYS[1], KEYS[4], KEYS[6])
else
  redis.call('DEL', KEYS[1], KEYS[3], KEYS[4], KEYS[6])
end
redis.call('ZREM', KEYS[5], ARGV[1])
return 1
