-- Shared by every script that changes a task (a helper of the library, after numbers.lua:
-- library.rs): the one place a task event is written. Its parts, in this order, are
-- `events::TASK_EVENT_PARTS`, which the server reads back (a unit test compares the two).

-- The events after which a workflow whose step the task is moves on: its ends.
local WORKFLOW_MOVES = {succeeded = true, failed = true, cancelled = true}

-- The events this script call wrote, per stream: `flush_events` appends them at its end, as few
-- entries as it can (one `XADD` for many tasks costs Redis a fraction of one per task:
-- docs/benchmark-notes.md). `events::TASK_EVENT_PARTS` reads them back. Set afresh for each
-- call (call.lua).
local written_events, written_streams
-- The most events one entry holds: what a stream's trimming counts in entries stays near its
-- count in events, whatever the mix of sizes.
local EVENTS_PER_ENTRY = 32

-- Writes event `name` (the new status, or `progress`) of task `id` to the capped stream `events`
-- (its queue's), capped near `maxlen` events. An event's parts are separated by the unit
-- separator, in the order of `events::TASK_EVENT_PARTS`: name, task, kind, status, attempt,
-- progress, time, workflow and error (last, so it may hold anything but the record separator,
-- which it becomes a space in: each is Courier's own text but the error). An entry holds the
-- events of one script call, in the order they happened, as one field `e`: the events separated
-- by the record separator (one field rather than one per event costs Redis less to write and to
-- read back: docs/benchmark-notes.md, "Ninth step"). The workflow (the task's, where it is a
-- step; the servers' workflow loops follow it) is given only to the ends of a workflow's task
-- and to `requeued` (a dead one queued again): the caller's `workflow` when it read the record's
-- (`''` for none), else read here.
local function emit_event(events, maxlen, base, name, id, kind, status, attempt, progress, err, at,
    requeued, workflow)
  workflow = (WORKFLOW_MOVES[name] or requeued)
    and (workflow or workflow_of(base .. ':task:' .. id))
  local written = written_events[events]
  if not written then
    written = {}
    written_events[events] = written
    written_streams[#written_streams + 1] = {events, tonumber(maxlen)}
  end
  if err and err ~= '' and string.find(err, '\30', 1, true) then
    err = string.gsub(err, '\30', ' ')
  end
  written[#written + 1] = name .. '\31' .. id .. '\31' .. (kind or '') .. '\31' .. status .. '\31'
    .. (attempt or '0') .. '\31' .. (progress or '') .. '\31' .. at .. '\31' .. (workflow or '')
    .. '\31' .. (err or '')
end

-- Appends the events this script call wrote (every function of the library ends with it:
-- library.rs). Each stream's events are split evenly over as few entries as hold them,
-- and each append trims the stream to about `maxlen` events' worth of entries that size.
local function flush_events()
  for _, stream in ipairs(written_streams) do
    local key, maxlen = stream[1], stream[2]
    local written = written_events[key]
    local count = #written
    local entries = math.ceil(count / EVENTS_PER_ENTRY)
    local per_entry = math.ceil(count / entries)
    for first = 1, count, per_entry do
      local last = math.min(first + per_entry - 1, count)
      redis.call('XADD', key, 'MAXLEN', '~', math.ceil(maxlen / (last - first + 1)), '*', 'e',
        table.concat(written, '\30', first, last))
    end
  end
end
