-- Begins a call of one of the library's functions (library.rs): its keys and arguments become
-- `KEYS` and `ARGV`, as `EVAL` made them, and the helpers' per-call state starts afresh. The
-- library's locals outlive a call, so every one declared without a value at a helper's top level
-- is set here (a unit test holds the two together).
local function begin_call(keys, args)
  KEYS, ARGV = keys, args
  written_events, written_streams = {}, {}
  ensured, marked = {}, {}
  floor, log = math.floor, math.log
end
