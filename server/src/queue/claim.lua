-- Takes leases for a worker's free slots: on the entries given (read by a blocking read, or
-- taken over from a dead holder), or else on up to `count` new entries, most urgent first, as
-- far as the queue's limits (pause, concurrency, rate) allow.
-- KEYS: ready-high, ready, ready-low, events
-- ARGV: the leasing arguments (lease.lua), count, then for each given entry: stream index (1-3),
--       entry id, task id ('' when the entry has none)
-- Returns {replies (one of take_lease per entry), why nothing more may start ('' when nothing
-- stops it), in how many ms to look again}.
local ctx = leasing_context(math.max(#ARGV - 9, 0) / 3)
start_budget(ctx)
local replies = {}
if #ARGV > 9 then
  for i = 10, #ARGV, 3 do
    replies[#replies + 1] = take_lease(ctx, tonumber(ARGV[i]), ARGV[i + 1], ARGV[i + 2])
  end
else
  take_new(ctx, tonumber(ARGV[9]), replies)
end
return {replies, ctx.blocked, ctx.retry_ms}
