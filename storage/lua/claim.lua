-- Take over entries idle for a while in any consumer's pending entries list (a dead
-- consumer's), without counting a delivery: a takeover is no try at the entry
-- (begin.lua counts the attempts that begin).
-- KEYS[1] message stream; ARGV[1] group, ARGV[2] consumer, ARGV[3] min idle time (ms),
-- ARGV[4] start id, ARGV[5] count
-- Returns {CLAIMED, {next start id, {{id, {field, value, ...}, delivery count}, ...},
-- deleted ids}}: deleted ids were pending but their entries are gone from the stream
-- (XAUTOCLAIM drops them from the pending entries list).
local CLAIMED = 0
local claimed = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4],
  'COUNT', ARGV[5], 'JUSTID')
local out = {}
for _, id in ipairs(claimed[2]) do
  local found = redis.call('XRANGE', KEYS[1], id, id)
  if found[1] then
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
    table.insert(out, {id, found[1][2], p[1] and p[1][4] or 1})
  end
end
return reply(CLAIMED, {claimed[1], out, claimed[3] or {}})
