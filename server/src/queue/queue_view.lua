-- What a queue holds and how it is set, for its view: one read of every count.
-- KEYS: ready-high, ready, ready-low, delayed, retrying, dead, ended, settings
-- ARGV: group, now ms
-- Returns {queued high, queued normal, queued low, scheduled, retrying, running (the group's
-- pending entries: leases held), dead, ms since
-- the oldest queued task was queued ('' when none), ends in the last minute, paused ('1' or ''),
-- max_depth, concurrency, rate_limit, rate_period_ms ('' for each one unset)}.
local now = tonumber(ARGV[2])
local counts, oldest, running = {}, nil, 0
for s = 1, 3 do
  counts[s] = unread(KEYS[s], ARGV[1])
  local info = redis.call('EXISTS', KEYS[s]) == 1 and group_info(KEYS[s], ARGV[1])
  running = running + ((info and info['pending']) or 0)
  if counts[s] > 0 then
    -- The first entry after the last one handed out is the oldest still queued.
    local after = info and info['last-delivered-id'] or '0-0'
    local first = redis.call('XRANGE', KEYS[s], '(' .. after, '+', 'COUNT', 1)
    local at = first[1] and tonumber(string.match(first[1][1], '^(%d+)'))
    if at and (not oldest or at < oldest) then
      oldest = at
    end
  end
end
local minute_ago, ended = math.floor(now / 1000) - 60, 0
local tally = redis.call('HGETALL', KEYS[7])
for i = 1, #tally, 2 do
  if (tonumber(tally[i]) or 0) > minute_ago then
    ended = ended + (tonumber(tally[i + 1]) or 0)
  end
end
local s = redis.call('HMGET', KEYS[8], 'paused', 'max_depth', 'concurrency', 'rate_limit',
  'rate_period_ms')
return {counts[1], counts[2], counts[3], redis.call('ZCARD', KEYS[4]), redis.call('ZCARD', KEYS[5]),
  running, redis.call('ZCARD', KEYS[6]),
  oldest and tostring(math.max(now - oldest, 0)) or '', ended, s[1] or '', s[2] or '', s[3] or '',
  s[4] or '', s[5] or ''}
