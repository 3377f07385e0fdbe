-- Creates or replaces a subscription, unless creating it would take the topic past its bound:
-- checked and written in one step, so racing creations cannot pass the bound together.
-- KEYS: the topic's subscriptions hash, the set of topics
-- ARGV: subscription name, its JSON, most subscriptions a topic may have, topic name
-- Returns 1 when created, 0 when replaced, -1 when refused.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  return -1
end
local created = redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[4])
return created
