-- Shared by every script that changes a task (prepended first when loaded): the one place a task
-- event is written. Its parts, in this order, are `events::TASK_EVENT_PARTS`, which the server
-- reads back (a unit test compares the two).

-- The events after which a workflow whose step the task is moves on: its ends.
local WORKFLOW_MOVES = {succeeded = true, failed = true, cancelled = true}

-- Appends event `name` (the new status, or `progress`) of task `id` to the capped stream `events`
-- (its queue's). The entry is one field, `t`, whose parts are separated by the unit separator in
-- the order of `events::TASK_EVENT_PARTS`: name, task, kind, status, attempt, progress, time,
-- workflow and error (last, so it may hold anything). One field rather than nine costs Redis less
-- to append and to read back (docs/benchmark-notes.md). The workflow (the task's, where it is a
-- step; the servers' workflow loops follow it) is given only to the ends of a workflow's task and
-- to `requeued` (a dead one queued again): the caller's `workflow` when it read the record's
-- (`''` for none), else read here.
local function emit_event(events, maxlen, base, name, id, kind, status, attempt, progress, err, at,
    requeued, workflow)
  workflow = (WORKFLOW_MOVES[name] or requeued)
    and (workflow or redis.call('HGET', base .. ':task:' .. id, 'wf'))
  redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 't', name .. '\31' .. id .. '\31'
    .. (kind or '') .. '\31' .. status .. '\31' .. (attempt or '0') .. '\31' .. (progress or '')
    .. '\31' .. at .. '\31' .. (workflow or '') .. '\31' .. (err or ''))
end
