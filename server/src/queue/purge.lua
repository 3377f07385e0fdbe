-- Deletes a dead letter: its record, payload and result.
-- KEYS: task, dead, payload, result, index, idempotency key
-- ARGV: task id
-- Returns 1 when deleted, 0 when it is not a dead letter.
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[3], KEYS[4], KEYS[6])
redis.call('ZREM', KEYS[5], ARGV[1])
return 1
