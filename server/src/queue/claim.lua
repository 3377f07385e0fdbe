-- Takes leases for a worker's free slots: on the entries given (read by a blocking read, or
-- taken over from a dead holder), or else on up to `count` new entries of the lanes of the kinds
-- it runs, most urgent first, as far as the queue's limits (pause, concurrency, rate) allow.
-- KEYS: events
-- ARGV: the leasing arguments (lease.lua), count, then for each given entry: its lane's kind,
--       stream index (1-3), entry id, task id ('' when the entry has none)
-- Returns {replies (one of take_lease per entry), why nothing more may start ('' when nothing
-- stops it), in how many ms to look again}.
local ctx = leasing_context(math.max(#ARGV - 10, 0) / 4)
start_budget(ctx)
local replies = {}
if #ARGV > 10 then
  for i = 11, #ARGV, 4 do
    replies[#replies + 1] = take_lease(ctx, ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3])
  end
else
  take_new(ctx, tonumber(ARGV[10]), replies)
end
return {replies, ctx.blocked, ctx.retry_ms}
