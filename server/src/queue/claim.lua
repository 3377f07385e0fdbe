-- Takes leases for a worker's free slots: on the entries given (read by a blocking read, or
-- taken over from a dead holder), or else on up to `count` new entries, most urgent first.
-- KEYS: ready-high, ready, ready-low, events
-- ARGV: key base, group, consumer, token base, now ms, events maxlen, dead-letter retention ms,
--       count, then for each given entry: stream index (1-3), entry id, task id ('' when the
--       entry has none)
-- Returns one reply of take_lease per entry.
local streams = {KEYS[1], KEYS[2], KEYS[3]}
local replies = {}
if #ARGV > 8 then
  for i = 9, #ARGV, 3 do
    replies[#replies + 1] = take_lease(ARGV[1], streams, tonumber(ARGV[i]), ARGV[i + 1], ARGV[i + 2],
      ARGV[2], ARGV[4] .. ':' .. #replies, ARGV[5], KEYS[4], ARGV[6], ARGV[7])
  end
else
  take_new(ARGV[1], streams, ARGV[2], ARGV[3], tonumber(ARGV[8]), ARGV[4], ARGV[5], KEYS[4],
    ARGV[6], ARGV[7], replies)
end
return replies
