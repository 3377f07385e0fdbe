-- Shared by the scripts that end a session task (prepended to them when they are loaded).
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
