-- Forgets the token named ARGV[1]: its record, its name and when it was last used.
-- KEYS: names (name -> digest), tokens (digest -> JSON), used (digest -> ms), version
-- ARGV: name
-- Returns 1 when revoked, 0 when no token has that name.
local names, tokens, used, version = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local digest = redis.call('HGET', names, ARGV[1])
if not digest then
    return 0
end
redis.call('HDEL', names, ARGV[1])
redis.call('HDEL', tokens, digest)
redis.call('HDEL', used, digest)
redis.call('INCR', version)
return 1
