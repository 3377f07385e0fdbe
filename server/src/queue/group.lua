-- Shared by the scripts that look into the consumer group (prepended to them when loaded).

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
