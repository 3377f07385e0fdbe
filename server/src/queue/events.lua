-- Shared by every script that changes a task (prepended first when loaded): the one place a task
-- event is written. Its fields, in this order, are `events::EVENT_FIELDS`, which the server
-- reads back (a unit test compares the two).

-- Appends event `name` (the new status, or `progress`) of task `id` to the capped stream `events`.
local function emit_event(events, maxlen, name, id, kind, status, attempt, progress, err, at)
  kind, attempt, progress, err = kind or '', attempt or '0', progress or '', err or ''
  redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'event', name, 'task', id, 'kind', kind,
    'status', status, 'attempt', attempt, 'progress', progress, 'error', err, 'at', at)
end
