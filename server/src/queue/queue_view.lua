-- What a queue holds and how it is set, for its view: one read of every count.
-- KEYS: delayed, retrying, dead, ended, settings
-- ARGV: group, now ms, key base, dead-letter retention ms
-- Returns name, value pairs (`Queue::state` reads them by name): queued_high, queued_normal,
-- queued_low, scheduled, retrying, running (the group's pending entries: leases held), dead
-- (those failed within the retention), oldest_waiting_ms (since the oldest queued task was
-- queued; '' when none), finished_last_minute, and the settings paused ('1' or ''), max_depth,
-- concurrency, rate_limit, rate_period_ms ('' when unset); then, per kind with a lane or with
-- tasks in the delayed, retrying or dead set, `kind:{kind}:{state}` for each of queued, running,
-- scheduled, retrying and dead (kind_counts.lua keeps the last three).
local base, now, keep = ARGV[3], tonumber(ARGV[2]), tonumber(ARGV[4])
local kept_since = '(' .. (now - keep)
local counts, oldest, running = {0, 0, 0}, nil, 0
-- Per kind: {queued, running, scheduled, retrying}, and the kinds in the order they were met.
local per_kind, kinds = {}, {}
local function of_kind(kind)
  if not per_kind[kind] then
    per_kind[kind] = {0, 0, 0, 0}
    kinds[#kinds + 1] = kind
  end
  return per_kind[kind]
end
for _, kind in ipairs(lane_kinds(base)) do
  local kind_queued, kind_running = 0, 0
  for s = 1, 3 do
    local stream = lane_stream(base, kind, s)
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
  local k = of_kind(kind)
  k[1], k[2] = kind_queued, kind_running
end
local waiting = redis.call('HGETALL', base .. ':kind-counts')
local counted = false
for i = 1, #waiting, 2 do
  counted = counted or waiting[i] == 'since'
end
if not counted then
  rebuild_kind_counts(base, KEYS[1], KEYS[2], KEYS[3], now, keep)
  waiting = redis.call('HGETALL', base .. ':kind-counts')
end
local WAITING_SLOT = {scheduled = 3, retrying = 4}
for i = 1, #waiting, 2 do
  local kind, state = string.match(waiting[i], '^(.+):(%a+)$')
  if kind and WAITING_SLOT[state] then
    of_kind(kind)[WAITING_SLOT[state]] = tonumber(waiting[i + 1])
  end
end
for _, kind in ipairs(redis.call('SMEMBERS', base .. ':dead-kinds')) do
  of_kind(kind)
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
  'running', running, 'dead', redis.call('ZCOUNT', KEYS[3], kept_since, '+inf'),
  'oldest_waiting_ms', oldest and tostring(math.max(now - oldest, 0)) or '',
  'finished_last_minute', ended, 'paused', s[1] or '', 'max_depth', s[2] or '',
  'concurrency', s[3] or '', 'rate_limit', s[4] or '', 'rate_period_ms', s[5] or ''}
local STATES = {'queued', 'running', 'scheduled', 'retrying'}
for _, kind in ipairs(kinds) do
  for i, state in ipairs(STATES) do
    reply[#reply + 1] = 'kind:' .. kind .. ':' .. state
    reply[#reply + 1] = per_kind[kind][i]
  end
  reply[#reply + 1] = 'kind:' .. kind .. ':dead'
  reply[#reply + 1] = redis.call('ZCOUNT', dead_kind_key(base, kind), kept_since, '+inf')
end
return reply
