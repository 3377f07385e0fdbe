-- Shared by the scripts that look into the consumer group (a helper of the library: library.rs).

-- The fields of `group` on `stream` as XINFO GROUPS tells them (name, pending,
-- last-delivered-id, lag…), or nil when the stream has no such group.
local function group_info(stream, group)
  for _, entry in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local fields = {}
    for i = 1, #entry, 2 do
      fields[entry[i]] = entry[i + 1]
    end
    if fields['name'] == group then
      return fields
    end
  end
  return nil
end

-- The entries of ready `stream` that `group` has not handed out yet: its lag (the whole stream
-- while it has no group, or when Redis cannot tell the lag). Acknowledged entries stay on a
-- stream until a trim, so its length alone would count them too.
local function unread(stream, group)
  if redis.call('EXISTS', stream) == 0 then
    return 0
  end
  local info = group_info(stream, group)
  return (info and info['lag']) or redis.call('XLEN', stream)
end

-- How many tasks of the queue wait to run: unread on its ready `streams`, plus those due later
-- (`delayed`) or waiting for a retry (`retrying`).
local function waiting_tasks(streams, delayed, retrying, group)
  local waiting = redis.call('ZCARD', delayed) + redis.call('ZCARD', retrying)
  for _, stream in ipairs(streams) do
    waiting = waiting + unread(stream, group)
  end
  return waiting
end
