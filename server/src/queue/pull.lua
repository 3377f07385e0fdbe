-- Takes leases for a worker pulling over HTTP: first on entries of its lanes whose holder stopped
-- renewing them (taken over: another attempt), then on new ones, as far as the queue's limits
-- allow. Or, given entries (read for the pulling consumer by the server, queue/pull/plain.rs: ones
-- whose tasks need a decision, or read on a queue found with limits), takes leases on those alone
-- as far as the limits allow (the rest go back to the end of their streams), reading nothing
-- else. Each lease runs out `want` ms from now, at most the queue's lease.
-- KEYS: events
-- ARGV: the leasing arguments (lease.lua), count, the queue's lease ms (how long an entry goes
--       unrenewed before it is taken over), this lease's ms, then for each given entry: its
--       lane's kind, stream index (1-3), entry id, task id ('' when the entry has none)
-- Returns {replies (take_lease's, a run reply with its view's fields: `views`), why nothing more
-- may start ('' when nothing stops it), in how many ms to look again}.
local given = math.max(#ARGV - 12, 0) / 4
local ctx = leasing_context(given)
-- Each run reply comes with its task's view, and each lease taken says where its entry is.
ctx.views, ctx.taken = true, {}
start_budget(ctx)
local count, lease, want = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
local replies = {}
if given > 0 then
  for i = 13, #ARGV, 4 do
    replies[#replies + 1] = take_lease(ctx, ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3])
  end
else
  -- Entries handed out and not ended are on lanes that need not be ready: look at every lane.
  -- Finding the expired ones scans the lane's pending entries (every lease it holds), so a lane
  -- is scanned at most once a quarter second, however many workers ask: a lease that ran out is
  -- taken over by a request at most that much later than it could have been. A look scans at
  -- most ten entries for each it may take (`XAUTOCLAIM`), so each goes on where the one before
  -- stopped (`reclaim-from:{kind}`, a field per stream, kept a minute): from the start each
  -- time, one expired behind ten live leases would wait for them all to end.
  local due = {}
  for _, kind in ipairs(lanes_for(ctx.base, ARGV[9], 'lanes')) do
    if redis.call('SET', ctx.base .. ':reclaimed:' .. kind, '1', 'NX', 'PX', 250) then
      due[#due + 1] = kind
    end
  end
  for s = 1, 3 do
    for _, kind in ipairs(due) do
      if count <= 0 then
        break
      end
      local from = ctx.base .. ':reclaim-from:' .. kind
      local taken = redis.call('XAUTOCLAIM', lane_stream(ctx.base, kind, s), ctx.group,
        ctx.consumer, lease, redis.call('HGET', from, s) or '0-0', 'COUNT', count)
      redis.call('HSET', from, s, taken[1])
      redis.call('PEXPIRE', from, 60000)
      for _, e in ipairs(taken[2]) do
        replies[#replies + 1] = take_lease(ctx, kind, s, e[1], task_of(e[2]))
        count = count - 1
      end
    end
  end
  take_new(ctx, count, replies)
end
-- A shorter lease starts `lease - want` ms idle, so that it is taken over `want` ms from now.
if want < lease then
  for _, taken in ipairs(ctx.taken) do
    redis.call('XCLAIM', lane_stream(ctx.base, taken[1], taken[2]), ctx.group, ctx.consumer, 0,
      taken[3], 'IDLE', lease - want, 'JUSTID')
  end
end
return {replies, ctx.blocked, ctx.retry_ms}
