-- Delete the consumers of a group that have been idle for a while and hold no pending
-- entry. XGROUP DELCONSUMER drops the pending entries a consumer holds, so one that
-- holds any is kept (its entries are taken over first, and it goes at a later sweep);
-- the check and the delete are one step, so nothing is delivered to it in between.
-- A live consumer deleted here costs nothing: its next read or takeover makes it again.
-- KEYS[1] stream; ARGV[1] group, ARGV[2] idle time (ms: XINFO CONSUMERS' idle, since
-- the consumer's last read, takeover or claim)
-- Returns {SWEPT, the names deleted}, or {NO_GROUP}.
local SWEPT, NO_GROUP = 0, 1
local consumers = redis.pcall('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if consumers.err then
  return reply(NO_GROUP)
end
local bound = tonumber(ARGV[2])
local deleted = {}
for _, fields in ipairs(consumers) do
  local c = {}
  for i = 1, #fields, 2 do
    c[fields[i]] = fields[i + 1]
  end
  if c.pending == 0 and c.idle >= bound then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], c.name)
    table.insert(deleted, c.name)
  end
end
return reply(SWEPT, deleted)
