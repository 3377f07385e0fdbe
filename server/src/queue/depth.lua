-- How many tasks wait to run: queued, scheduled or waiting for a retry.
-- KEYS: ready-high, ready, ready-low, delayed, retrying
-- ARGV: group
return waiting_tasks({KEYS[1], KEYS[2], KEYS[3]}, KEYS[4], KEYS[5], ARGV[1])
