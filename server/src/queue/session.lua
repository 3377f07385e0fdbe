-- Shared by the scripts that queue or end a session task (prepended to them when they are
-- loaded). A session's tasks wait in its list, and only the list's head is on the ready stream,
-- so a session runs one task at a time, in order.

-- Queues task `id` at the end of session `list`; on `ready` at once if it heads the session.
local function join_session(list, ready, id)
  redis.call('RPUSH', list, id)
  if redis.call('LLEN', list) == 1 then
    redis.call('XADD', ready, '*', 'task', id)
  end
end

-- Takes task `id` out of the session `list` and, when it headed the session, queues the next one.
local function leave_session(list, ready, id)
  if redis.call('LINDEX', list, 0) == id then
    redis.call('LPOP', list)
    local next = redis.call('LINDEX', list, 0)
    if next then
      redis.call('XADD', ready, '*', 'task', next)
    end
  else
    redis.call('LREM', list, 0, id)
  end
end
