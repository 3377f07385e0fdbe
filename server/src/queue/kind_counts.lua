-- Shared by every script that puts a task into, or takes one out of, the delayed, retrying or
-- dead set (a helper of the library, after events.lua: library.rs). Those sets hold ids, not
-- kinds, so each kind's share of them is kept beside them, in keys built from `base`, the
-- queue's key prefix (one hash tag):
-- - `kind-counts` (hash): `{kind}:scheduled` and `{kind}:retrying`, each kind's members of the
--   delayed and retrying sets (a count back at 0 stays, as a kind's lane does: deleting it would
--   cost a command each time a kind's last waiting task leaves), and `since`, when the counts
--   were last rebuilt from the sets (`rebuild_kind_counts`; none yet: they are not trusted);
-- - `dead:kind:{kind}` (zset): the kind's dead letters, scored like the dead set (failure ms);
-- - `dead-kinds` (set): the kinds with such a set.
-- A count changes only when its set did (ZADD added, ZREM removed), so a task taken out twice
-- is counted out once.

-- The state a waiting set's members are in, by the set's name.
local WAITING_STATE = {delayed = 'scheduled', retrying = 'retrying'}

-- The state `set` (a key ending in `:delayed` or `:retrying`) holds its tasks in.
local function waiting_state(set)
  return WAITING_STATE[string.match(set, ':(%a+)$')]
end

-- Counts `n` more tasks of `kind` (none when nil: its record is gone) in waiting `state`.
local function count_waiting(base, kind, state, n)
  if not kind or n == 0 then
    return
  end
  redis.call('HINCRBY', base .. ':kind-counts', kind .. ':' .. state, n)
end

-- Adds `member` (a task of `kind`) to waiting `set` (delayed or retrying) at `score`.
local function enter_waiting(base, set, score, member, kind)
  if redis.call('ZADD', set, score, member) == 1 then
    count_waiting(base, kind, waiting_state(set), 1)
  end
end

-- Takes `member` (a task of `kind`) out of waiting `set`, if it is there.
local function leave_waiting(base, set, member, kind)
  if redis.call('ZREM', set, member) == 1 then
    count_waiting(base, kind, waiting_state(set), -1)
  end
end

-- The key of `kind`'s dead letters in the queue.
local function dead_kind_key(base, kind)
  return base .. ':dead:kind:' .. kind
end

-- Task `id` of `kind` failed at `now`: a dead letter in the queue's `dead` set and its kind's,
-- each trimmed of what failed longer than `keep` ms ago (their records are gone by then).
local function add_dead(base, dead, id, kind, now, keep)
  local oldest = '(' .. (tonumber(now) - tonumber(keep))
  redis.call('ZADD', dead, now, id)
  redis.call('ZREMRANGEBYSCORE', dead, '-inf', oldest)
  if kind then
    local key = dead_kind_key(base, kind)
    redis.call('ZADD', key, now, id)
    redis.call('ZREMRANGEBYSCORE', key, '-inf', oldest)
    redis.call('SADD', base .. ':dead-kinds', kind)
  end
end

-- Takes task `id` of `kind` out of the dead `dead` set and its kind's; returns whether it was
-- in the queue's.
local function remove_dead(base, dead, id, kind)
  if redis.call('ZREM', dead, id) == 0 then
    return false
  end
  if kind then
    local key = dead_kind_key(base, kind)
    if redis.call('ZREM', key, id) == 1 and redis.call('EXISTS', key) == 0 then
      redis.call('SREM', base .. ':dead-kinds', kind)
    end
  end
  return true
end

-- Counts the tasks of the delayed, retrying and dead sets per kind afresh, from their records:
-- for a queue whose sets were filled before their kinds were counted (a Redis from an older
-- Courier), which has no `since`. Dead letters older than `keep` ms are past counting. One
-- script, so nothing changes meanwhile: a one-time cost that grows with those sets (a page of
-- members at a time, each record read once).
local function rebuild_kind_counts(base, delayed, retrying, dead, now, keep)
  local PAGE = 1000
  local counts, dead_kinds = base .. ':kind-counts', base .. ':dead-kinds'
  for _, kind in ipairs(redis.call('SMEMBERS', dead_kinds)) do
    redis.call('DEL', dead_kind_key(base, kind))
  end
  redis.call('DEL', counts, dead_kinds)
  local function kind_of(id)
    return redis.call('HGET', base .. ':task:' .. id, 'kind')
  end
  for _, set in ipairs({delayed, retrying}) do
    local tally, from, members = {}, 0, nil
    repeat
      members = redis.call('ZRANGE', set, from, from + PAGE - 1)
      for _, member in ipairs(members) do
        local kind = kind_of(string.match(member, '^%a:(.+)$') or member)
        if kind then
          tally[kind] = (tally[kind] or 0) + 1
        end
      end
      from = from + PAGE
    until #members < PAGE
    for kind, n in pairs(tally) do
      redis.call('HSET', counts, kind .. ':' .. waiting_state(set), n)
    end
  end
  -- By rank from the first one still kept: each page costs the same, wherever it starts.
  local from, entries = redis.call('ZCOUNT', dead, '-inf', tonumber(now) - tonumber(keep)), nil
  repeat
    entries = redis.call('ZRANGE', dead, from, from + PAGE - 1, 'WITHSCORES')
    for i = 1, #entries, 2 do
      local kind = kind_of(entries[i])
      if kind then
        redis.call('ZADD', dead_kind_key(base, kind), entries[i + 1], entries[i])
        redis.call('SADD', dead_kinds, kind)
      end
    end
    from = from + PAGE
  until #entries < 2 * PAGE
  redis.call('HSET', counts, 'since', now)
end
