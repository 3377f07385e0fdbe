-- Stores a new token under a name no other token has.
-- KEYS: names (name -> digest), tokens (digest -> JSON), version, enforced (set once: access
--       control stays on after the last token is revoked, rather than opening the server)
-- ARGV: name, digest, json, max_tokens
-- Returns 1 when stored, 0 when the name is taken, -1 when there are max_tokens already.
local names, tokens, version, enforced = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local name, digest, json, max_tokens = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
if redis.call('HEXISTS', names, name) == 1 then
    return 0
end
if redis.call('HLEN', tokens) >= max_tokens then
    return -1
end
redis.call('HSET', names, name, digest)
redis.call('HSET', tokens, digest, json)
redis.call('SET', enforced, '1')
redis.call('INCR', version)
return 1
