-- Ends attempts whose caller still holds the lease (a late holder changes nothing), then takes
-- leases on up to `want` new entries for the slots those attempts free: one round trip both ends
-- a batch of attempts and starts the next. With `want` 0 it reads neither the limits nor the
-- lanes (and says nothing stops it: it did not look).
-- KEYS: events, retrying, dead
-- ARGV: the leasing arguments (lease.lua), want, whose leases these are ('pulled': pulled over
--       HTTP, see below; '' a worker process's), how long a succeeded task's payload is kept
--       (ms, at most the retention), then 13 for each attempt: task id, stream index
--       (1-3), entry id, lease token, outcome (succeeded|retrying|failed|cancelled), error,
--       result type ('' for JSON: record.rs, `stored_result_type`), due ms, result bytes,
--       dead-letter reason, session ('' for none), idempotency key (''), where the result is:
--       '' (its bytes came here, for a key of its own), 'record' (its bytes came here, small
--       text kept in the record's `result` field), 'staged' (at `base:staged:token`) or
--       'payload' (the payload, unchanged: kept once, under the payload's key)
-- A large result is staged with a plain SET before this script runs, which renames it: moving
-- a large string through Lua would stall Redis for milliseconds.
-- A pulled lease's holder knows neither its task's session nor its idempotency key (their
-- arguments are ignored: the record's are read), and a task whose cancel was asked for while it
-- ran ends cancelled, whatever its holder reports.
-- Returns {applied (1, 2 when it ended cancelled instead, or 0 when the lease was lost) per
-- attempt, take_lease replies, why no more may start ('' when nothing stops it), in how many ms
-- to look again, the worker each attempt's record names (pulled leases; else empty), what the
-- stats count: {Redis's time ms, tasks succeeded, tasks failed for good, tasks ended (those and
-- the cancelled, for the tally of ends: the caller writes it with the stats, `stats::Tally`)},
-- the wait and run samples' bins ('w{bin}', 'r{bin}') and each bin's count}.
local ctx = leasing_context()
local base, now, maxlen = ctx.base, ctx.now, ctx.maxlen
local applied, workers = {}, {}
local pulled = ARGV[11] == 'pulled'
local payload_keep = ARGV[12]
-- What a pulled lease's end reads beyond a worker process's (whose records name the worker
-- ending them, this call's: the lease wrote it), and takes from the task's options: its session
-- and idempotency key, which a worker process's lease knew.
local PULLED_FIELDS = pulled and {'worker', 'cancel'} or {}
-- The entries of ended attempts, per stream (by key): acknowledged together at the end.
local ended, ended_streams = {}, {}
-- How many tasks ended (rather than waiting for a retry).
local ends = 0
-- What the stats count: tasks succeeded and failed for good, and wait and run samples by bin
-- (named once per bin and call, not per sample: a number turned into text goes through printf);
-- the script returns them rather than writing them.
local succeeded, failed, samples = 0, 0, {w = {}, r = {}}
local function sample(kind, ms)
  local bins = samples[kind]
  local bin = latency_bin(ms > 0 and ms or 0)
  bins[bin] = (bins[bin] or 0) + 1
end
-- Deletes what only the running attempt of `task` has as it ends, and the fields `dropped` names;
-- the attempt's worker stays when the record is to `tell` the attempt (ends.lua).
local function end_attempt(task, tell, dropped)
  if tell then
    end_told(task, unpack(dropped))
  else
    end_running(task, unpack(dropped))
  end
end
-- Adds field `name` = `value` to `into`, the optional pairs of a record's HSET.
local function also(into, name, value)
  into[#into + 1] = name
  into[#into + 1] = value
end
-- A stream's place as its argument gives it.
local STREAM_OF = {['1'] = 1, ['2'] = 2, ['3'] = 3}
for a = 13, #ARGV, 13 do
  local id, s, entry, outcome, err = ARGV[a], STREAM_OF[ARGV[a + 1]], ARGV[a + 2], ARGV[a + 4],
    ARGV[a + 5]
  local session, idem = ARGV[a + 10], ARGV[a + 11]
  local task = base .. ':task:' .. id
  -- What the end needs of the record (a retry's priority is read only for it).
  local f = redis.call('HMGET', task, 'lease', 'kind', 'attempts', 'progress', 'options',
    'attempt_started', 'waited', 'payload', 'started', unpack(PULLED_FIELDS))
  local options = options_of(task, f[5])
  local ref, workflow = options.payload_ref, options.wf
  local worker = ctx.worker
  if pulled then
    worker, session, idem = f[10], options.session or '', options.idem or ''
    workers[#workers + 1] = f[1] == ARGV[a + 3] and worker or ''
  end
  -- A small payload lives in the record (enqueue.lua): no key to check, none to expire. Its
  -- presence says so (record.rs, `PAYLOAD`).
  local in_record = f[8] ~= false
  local source, source_key = ARGV[a + 12], nil
  if source == 'staged' then
    source_key = base .. ':staged:' .. ARGV[a + 3]
  elseif source == 'payload' and not in_record then
    source_key = payload_key(base, id, ref)
  end
  -- A staged or payload result is never empty, so a length of 0 means it is missing.
  local size = source_key and f[1] == ARGV[a + 3] and redis.call('STRLEN', source_key)
  if f[1] ~= ARGV[a + 3] or size == 0 then
    -- A late holder's staged result goes; a result that is missing (expired) leaves the attempt
    -- to run again once its lease expires.
    if source == 'staged' then
      redis.call('DEL', source_key)
    end
    applied[#applied + 1] = 0
  else
    local ends_as = 1
    if pulled and f[11] == '1' and outcome ~= 'cancelled' then
      outcome, err, ends_as = 'cancelled', '', 2
      if source == 'staged' then
        redis.call('DEL', source_key)
      end
    end
    local stream = lane_stream(base, f[2], s)
    if not ended[stream] then
      ended[stream] = {}
      ended_streams[#ended_streams + 1] = stream
    end
    local entries = ended[stream]
    entries[#entries + 1] = entry
    local progress = f[4] or ''
    if outcome == 'retrying' then
      local due = ARGV[a + 7]
      -- Its lease is no one's now, and a cancel asked of the attempt that failed asks nothing
      -- of the next (a retry is rare enough for the command more).
      redis.call('HDEL', task, 'lease', 'cancel')
      -- The attempt's entry in the task's attempt log, written by the record's one HSET.
      local logged, log_entry = attempt_log_entry(f[3], 'retried', f[6], now, worker, err)
      redis.call('HSET', task, 'status', outcome, 'updated', now, 'error', err, 'next_run', due,
        logged, log_entry)
      local priority = redis.call('HGET', task, 'priority') or 'n'
      enter_waiting(base, KEYS[2], due, priority .. ':' .. id, f[2])
    else
      -- Retention counts from the end, so a result is kept as long as promised; dead letters
      -- are kept longer, for someone to look at.
      local keep = ctx.keep
      -- A later attempt's record may hold an earlier one's error and next run, which the end
      -- drops (an error of its own replaces the earlier one); a first attempt's has neither.
      local extra, dropped = {}, {}
      if err ~= '' then
        also(extra, 'error', err)
      end
      if f[3] ~= '1' then
        dropped[#dropped + 1] = 'next_run'
        if err == '' then
          dropped[#dropped + 1] = 'error'
        end
      end
      -- A first attempt begun at the task's first start (none handed back before it) goes
      -- unlogged: the record keeps its worker, and says the rest (record.rs, `ATTEMPT_LOG`).
      local told = f[3] == '1' and f[6] and f[9] == f[6]
      if not told then
        -- The attempt's entry in the task's attempt log, written by the record's one HSET.
        local logged, log_entry = attempt_log_entry(f[3], outcome, f[6], now, worker, err)
        also(extra, logged, log_entry)
      end
      if outcome == 'succeeded' then
        local result, result_key = ARGV[a + 8], base .. ':result:' .. id
        if source == 'staged' then
          redis.call('RENAME', source_key, result_key)
          redis.call('PEXPIRE', result_key, keep)
        elseif source == 'record' then
          also(extra, 'result', result)
        elseif source == 'payload' then
          also(extra, 'result_is_payload', '1')
        else
          redis.call('SET', result_key, result, 'PX', keep)
        end
        progress = '100'
        -- A JSON result's type goes unwritten: an absent one reads as JSON (record.rs).
        local result_type = ARGV[a + 6]
        if result_type ~= '' then
          also(extra, 'result_type', result_type)
        end
        -- (A cancel asked for as it ran stays asked: nothing reads it of an ended task, and a
        -- dead letter queued again drops it, requeue.lua.)
        -- (Its progress is dropped: a success is all of it, as the store reads it.)
        dropped[#dropped + 1] = 'progress'
        end_attempt(task, told, dropped)
        redis.call('HSET', task, 'status', outcome, 'finished', now, unpack(extra))
      else
        -- A failure's reason rides along.
        if outcome == 'failed' then
          also(extra, 'dead_reason', ARGV[a + 9])
        end
        end_attempt(task, told, dropped)
        redis.call('HSET', task, 'status', outcome, 'finished', now, unpack(extra))
        if outcome == 'failed' then
          keep = ctx.dead_keep
          add_dead(base, KEYS[3], id, f[2], now, keep)
        end
      end
      -- The idempotency key lives as long as the task it stands for; a succeeded task's payload
      -- as long as `--payload-retention` says, unless it is the result.
      local kept_payload = outcome == 'succeeded' and source ~= 'payload' and payload_keep or nil
      keep_after_end(base, id, ref, idem, keep, now, in_record, kept_payload)
      ends = ends + 1
      if session ~= '' then
        leave_session(base, base .. ':session:' .. session, id)
      end
    end
    emit_event(KEYS[1], maxlen, base, outcome, id, f[2], outcome, f[3], progress, err, now, nil,
      workflow or '')
    if outcome == 'succeeded' then
      succeeded = succeeded + 1
    elseif outcome == 'failed' then
      failed = failed + 1
    end
    local started = tonumber(f[6])
    if started then
      if f[7] ~= NOT_SAMPLED then
        -- How long it waited ready: Redis stamped its entry's id as it joined the stream.
        sample('w', started - (tonumber(string.sub(entry, 1, (string.find(entry, '-', 1, true) or 0) - 1))
          or started))
      end
      sample('r', ctx.now_ms - started)
    end
    applied[#applied + 1] = ends_as
  end
end
for _, stream in ipairs(ended_streams) do
  settle(stream, ctx.group, ended[stream])
end
-- What the stats count, for the caller to add into the time buckets and the tally of ends with its
-- other calls' counts (stats.rs: a bucket's writes, several per call, cost more than anything
-- else a finish does once per call, docs/benchmark-notes.md "Eighth step"; the tally's, one a
-- call, "Twelfth step").
local bins, counts = {}, {}
for kind, by_bin in pairs(samples) do
  for bin, count in pairs(by_bin) do
    bins[#bins + 1] = kind .. bin
    counts[#counts + 1] = count
  end
end
local leases, want = {}, tonumber(ARGV[10])
if want > 0 then
  -- The limits are read after the ends: the attempts that ended free their room.
  start_budget(ctx)
  take_new(ctx, want, leases)
end
return {applied, leases, ctx.blocked or '', ctx.retry_ms or 0, workers,
  {ctx.now_ms, succeeded, failed, ends}, bins, counts}
