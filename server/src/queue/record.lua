-- Reading a task's record (a helper of the library, before the others: library.rs).

-- The fields a record's `options` holds, in its order (record.rs, `OPTION_FIELDS`): what its
-- submission set, which stays as it was. It is a JSON array of their values as text, null for
-- one unset, the unset ones at the end left off.
local OPTION_FIELDS = {'max_attempts', 'timeout_ms', 'expires', 'payload_type', 'payload_bytes',
  'session', 'idem', 'payload_ref', 'subscription', 'wf', 'wf_step'}

-- The options of record `task`, by field name (nil: unset), from its `options` field as read
-- (`packed`, false when absent). A record stored before the forty-second step of
-- docs/benchmark-notes.md has no such field: its options are fields of their own, read here.
local function options_of(task, packed)
  local values = packed and cjson.decode(packed)
    or redis.call('HMGET', task, unpack(OPTION_FIELDS))
  local options = {}
  for i, name in ipairs(OPTION_FIELDS) do
    local value = values[i]
    if value and value ~= cjson.null and value ~= '' then
      options[name] = value
    end
  end
  return options
end

-- `options` (by field name, as `options_of` reads them) as a record's `options` field holds them.
local function options_text(options)
  local values, set = {}, 0
  for i, name in ipairs(OPTION_FIELDS) do
    values[i] = options[name] or cjson.null
    if options[name] then
      set = i
    end
  end
  if set == 0 then
    -- (cjson writes an empty table as an object.)
    return '[]'
  end
  return cjson.encode({unpack(values, 1, set)})
end

-- The workflow record `task` is a step of (nil: none).
local function workflow_of(task)
  return options_of(task, redis.call('HGET', task, 'options')).wf
end
