-- What a queue holds and how it is set, for its view: one read of every count.
-- KEYS: delayed, retrying, dead, ended, settings
-- ARGV: group, now ms, key base
-- Returns name, value pairs (`Queue::state` reads them by name): queued_high, queued_normal,
-- queued_low, scheduled, retrying, running (the group's pending entries: leases held), dead,
-- oldest_waiting_ms (since the oldest queued task was queued; '' when none), finished_last_minute,
-- and the settings paused ('1' or ''), max_depth, concurrency, rate_limit, rate_period_ms (''
-- when unset); then, per kind with a lane, `kind:{kind}:queued` and `kind:{kind}:running`.
local now = tonumber(ARGV[2])
local counts, oldest, running = {0, 0, 0}, nil, 0
local per_kind = {}
for _, kind in ipairs(lane_kinds(ARGV[3])) do
  local kind_queued, kind_running = 0, 0
  for s = 1, 3 do
    local stream = lane_stream(ARGV[3], kind, s)
    local unread_here = unread(stream, ARGV[1])
    counts[s] = counts[s] + unread_here
    local info = redis.call('EXISTS', stream) == 1 and group_info(stream, ARGV[1])
    local pending = (info and info['pending']) or 0
    running = running + pending
    kind_queued, kind_running = kind_queued + unread_here, kind_running + pending
    if unread_here > 0 then
      -- The first entry after the last one handed out is the oldest still queued.
      local after = info and info['last-delivered-id'] or '0-0'
      local first = redis.call('XRANGE', stream, '(' .. after, '+', 'COUNT', 1)
      local at = first[1] and tonumber(string.match(first[1][1], '^(%d+)'))
      if at and (not oldest or at < oldest) then
        oldest = at
      end
    end
  end
  per_kind[#per_kind + 1] = 'kind:' .. kind .. ':queued'
  per_kind[#per_kind + 1] = kind_queued
  per_kind[#per_kind + 1] = 'kind:' .. kind .. ':running'
  per_kind[#per_kind + 1] = kind_running
end
local minute_ago, ended = math.floor(now / 1000) - 60, 0
local tally = redis.call('HGETALL', KEYS[4])
for i = 1, #tally, 2 do
  if (tonumber(tally[i]) or 0) > minute_ago then
    ended = ended + (tonumber(tally[i + 1]) or 0)
  end
end
local s = redis.call('HMGET', KEYS[5], 'paused', 'max_depth', 'concurrency', 'rate_limit',
  'rate_period_ms')
local reply = {'queued_high', counts[1], 'queued_normal', counts[2], 'queued_low', counts[3],
  'scheduled', redis.call('ZCARD', KEYS[1]), 'retrying', redis.call('ZCARD', KEYS[2]),
  'running', running, 'dead', redis.call('ZCARD', KEYS[3]),
  'oldest_waiting_ms', oldest and tostring(math.max(now - oldest, 0)) or '',
  'finished_last_minute', ended, 'paused', s[1] or '', 'max_depth', s[2] or '',
  'concurrency', s[3] or '', 'rate_limit', s[4] or '', 'rate_period_ms', s[5] or ''}
for _, v in ipairs(per_kind) do
  reply[#reply + 1] = v
end
return reply
