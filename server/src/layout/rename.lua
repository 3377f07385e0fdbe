-- Renames a key of the layout before tags to its tagged name, unless the tagged name is taken:
-- checked and renamed in one step, so that two processes moving the same key never clobber.
-- KEYS: the old name, the new name
-- Returns 1 when renamed, 0 when there was nothing to rename, -1 when both names exist (the old
-- key is left as it is).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return -1
end
redis.call('RENAME', KEYS[1], KEYS[2])
return 1
