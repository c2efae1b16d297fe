-- Keep this consumer's in-flight entries fresh, so XAUTOCLAIM leaves them alone while
-- the worker lives. Only entries still owned by this consumer are touched: one taken
-- over by another worker (after a long pause here) is not taken back. Which are still
-- its own is read from the consumer's pending entries, a page of XPENDING at a time
-- (one command for up to PAGE entries, rather than one an entry).
-- KEYS[1] message stream; ARGV[1] group, ARGV[2] consumer, ARGV[3..] entry ids
-- Returns {REFRESHED, the ids still owned by this consumer}.
local REFRESHED = 0
local PAGE = 1000
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local wanted = {}
for i = 3, #ARGV do
  wanted[ARGV[i]] = true
end
local mine = {}
local start = '-'
while start do
  local page = redis.call('XPENDING', stream, group, start, '+', PAGE, consumer)
  for _, pending in ipairs(page) do
    if wanted[pending[1]] then
      table.insert(mine, pending[1])
    end
  end
  start = #page == PAGE and '(' .. page[#page][1] or nil
end
if #mine > 0 then
  -- JUSTID: resets the idle time without counting a delivery.
  local args = {'XCLAIM', stream, group, consumer, 0}
  for _, id in ipairs(mine) do
    table.insert(args, id)
  end
  table.insert(args, 'JUSTID')
  redis.call(unpack(args))
end
return reply(REFRESHED, mine)
