-- How many tasks wait to run: queued (on any lane), scheduled or waiting for a retry.
-- KEYS: delayed, retrying
-- ARGV: group, key base
return waiting_tasks(all_ready_streams(ARGV[2]), KEYS[1], KEYS[2], ARGV[1])
