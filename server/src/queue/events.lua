-- Shared by every script that changes a task (prepended first when loaded): the one place a task
-- event is written. Its fields, in this order, are `events::EVENT_FIELDS`, which the server
-- reads back (a unit test compares the two).

-- The queue whose keys start with `base` (`{prefix}:{queue}`): the name inside its hash tag,
-- worked out once per script run.
local queue_names = {}
local function queue_of(base)
  local name = queue_names[base]
  if not name then
    name = string.match(base, '{([^}]*)}$') or ''
    queue_names[base] = name
  end
  return name
end

-- The events after which a workflow whose step the task is moves on: its ends.
local WORKFLOW_MOVES = {succeeded = true, failed = true, cancelled = true}

-- Appends event `name` (the new status, or `progress`) of task `id` of the queue at `base` to the
-- capped stream `events`. An end of a workflow's task (or `requeued`, a dead one queued again)
-- names the workflow in a last field, `workflow`, which the servers' workflow loops follow: the
-- caller's `workflow` when it read the record's (`''` for none), else read here.
local function emit_event(events, maxlen, base, name, id, kind, status, attempt, progress, err, at,
    requeued, workflow)
  kind, attempt, progress, err = kind or '', attempt or '0', progress or '', err or ''
  workflow = (WORKFLOW_MOVES[name] or requeued)
    and (workflow or redis.call('HGET', base .. ':task:' .. id, 'wf'))
  if workflow and workflow ~= '' then
    redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'event', name, 'task', id, 'kind', kind,
      'queue', queue_of(base), 'status', status, 'attempt', attempt, 'progress', progress, 'error',
      err, 'at', at, 'workflow', workflow)
    return
  end
  redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'event', name, 'task', id, 'kind', kind,
    'queue', queue_of(base), 'status', status, 'attempt', attempt, 'progress', progress, 'error',
    err, 'at', at)
end
