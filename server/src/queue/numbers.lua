-- Shared by every script (the library's first helper: library.rs): small counts as text. A
-- number Lua turns into text goes through printf and text into a number through strtod, each
-- costing Redis about what a field's read does (docs/benchmark-notes.md, "Ninth step"), so the
-- counts a call turns into text for every task (a lease's token, an attempt's number) are
-- remembered. These two tables are the library's only state that outlives a call: what they
-- hold is the same in every call (a pure function's results), and only small counts go in, so
-- they stay small (below 1,000 and 100 entries).
local COUNT_TEXT, NEXT_ATTEMPT = {}, {}

-- Count `n` (a whole number, not negative) as text.
local function count_text(n)
  local text = COUNT_TEXT[n]
  if not text then
    text = tostring(n)
    if n < 1000 then
      COUNT_TEXT[n] = text
    end
  end
  return text
end

-- The attempt after `attempt` (its record's text: nil or false before the first), as text.
local function next_attempt(attempt)
  attempt = attempt or '0'
  local text = NEXT_ATTEMPT[attempt]
  if not text then
    text = tostring((tonumber(attempt) or 0) + 1)
    if #attempt <= 2 then
      NEXT_ATTEMPT[attempt] = text
    end
  end
  return text
end
