-- Shared by every script (the library's first helper: library.rs): small counts as text. A
-- number Lua turns into text goes through printf and text into a number through strtod, each
-- costing Redis about what a field's read does (docs/benchmark-notes.md, "Ninth step"), so the
-- counts a call turns into text for every task (a lease's token, an attempt's number) are
-- remembered. What these tables hold is the same in every call: only counts are put in them,
-- and there are few.
local COUNT_TEXT, NEXT_ATTEMPT = {}, {}

-- Count `n` (a small whole number) as text.
local function count_text(n)
  local text = COUNT_TEXT[n]
  if not text then
    text = tostring(n)
    COUNT_TEXT[n] = text
  end
  return text
end

-- The attempt after `attempt` (its record's text: nil before the first), as text.
local function next_attempt(attempt)
  attempt = attempt or '0'
  local text = NEXT_ATTEMPT[attempt]
  if not text then
    text = tostring((tonumber(attempt) or 0) + 1)
    NEXT_ATTEMPT[attempt] = text
  end
  return text
end
