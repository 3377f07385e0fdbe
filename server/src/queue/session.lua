-- Shared by the scripts that queue or end a session task (a helper of the library, after
-- lanes.lua: library.rs). A session's tasks wait in its list, and only the list's head is on a
-- ready stream (its kind's normal one), so a session runs one task at a time, in order.

-- Queues task `id` of `kind` at the end of session `list`; on its lane at once if it heads the
-- session.
local function join_session(base, list, kind, id)
  redis.call('RPUSH', list, id)
  if redis.call('LLEN', list) == 1 then
    queue_on_lane(base, kind, 2, id)
  end
end

-- Takes task `id` out of the session `list` and, when it headed the session, queues the next one.
local function leave_session(base, list, id)
  if redis.call('LINDEX', list, 0) == id then
    redis.call('LPOP', list)
    local next = redis.call('LINDEX', list, 0)
    while next do
      local kind = redis.call('HGET', base .. ':task:' .. next, 'kind')
      if kind then
        queue_on_lane(base, kind, 2, next)
        return
      end
      -- Its record is gone (erased): it can never run, so it holds the session back no longer.
      redis.call('LPOP', list)
      next = redis.call('LINDEX', list, 0)
    end
  else
    redis.call('LREM', list, 0, id)
  end
end
