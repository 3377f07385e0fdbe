-- A session task has ended outside the other scripts: take it out of its session and queue the
-- next one.
-- KEYS: session list, ready
-- ARGV: task id
leave_session(KEYS[1], KEYS[2], ARGV[1])
return 1
