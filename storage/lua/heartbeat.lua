-- Keep this consumer's in-flight entries fresh, so XAUTOCLAIM leaves them alone while
-- the worker lives. Only entries still owned by this consumer are touched: one taken
-- over by another worker (after a long pause here) is not taken back.
-- KEYS[1] message stream; ARGV[1] group, ARGV[2] consumer, ARGV[3..] entry ids
-- Returns {REFRESHED, the ids still owned by this consumer}.
local REFRESHED = 0
local mine = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    table.insert(mine, ARGV[i])
  end
end
if #mine > 0 then
  -- JUSTID: resets the idle time without counting a delivery.
  local args = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}
  for _, id in ipairs(mine) do
    table.insert(args, id)
  end
  table.insert(args, 'JUSTID')
  redis.call(unpack(args))
end
return reply(REFRESHED, mine)
