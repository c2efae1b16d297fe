-- Hand a stopping consumer's pending entries to the group's heir, idle enough for the
-- next takeover (XAUTOCLAIM, by any live consumer) to take them at once, then delete the
-- consumer. XGROUP DELCONSUMER drops the pending entries the consumer holds, and nothing
-- would ever deliver them again (the group has read past them): so the consumer is
-- deleted only if it holds none, checked in this same step, where nothing can be
-- delivered to it in between.
-- KEYS[1] stream; ARGV[1] group, ARGV[2] consumer, ARGV[3] heir, ARGV[4] idle time (ms)
-- given to the entries handed over
-- Returns {RELEASED, entries handed over} (the consumer is deleted), {KEPT, entries
-- handed over} (it still holds entries: it is the heir itself), or {NO_GROUP}.
local RELEASED, KEPT, NO_GROUP = 0, 1, 2
local stream, group, consumer, heir = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
if redis.pcall('XPENDING', stream, group).err then
  return reply(NO_GROUP)
end
local handed = 0
if heir ~= consumer then
  local held = redis.call('XPENDING', stream, group, '-', '+', 100, consumer)
  while #held > 0 do
    -- JUSTID: a handover is no delivery. An entry gone from the stream leaves the
    -- pending entries list instead (the sweep of lost messages closes its message).
    local args = {'XCLAIM', stream, group, heir, 0}
    for _, p in ipairs(held) do
      table.insert(args, p[1])
    end
    table.insert(args, 'IDLE')
    table.insert(args, ARGV[4])
    table.insert(args, 'JUSTID')
    handed = handed + #redis.call(unpack(args))
    held = redis.call('XPENDING', stream, group, '-', '+', 100, consumer)
  end
end
if #redis.call('XPENDING', stream, group, '-', '+', 1, consumer) > 0 then
  return reply(KEPT, handed)
end
redis.call('XGROUP', 'DELCONSUMER', stream, group, consumer)
return reply(RELEASED, handed)
