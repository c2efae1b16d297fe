-- Close a session's oldest unanswered message if its stream entry is gone (deleted or
-- trimmed by hand, lost in a failover) and no consumer holds it, so the session's later
-- messages are not held up for ever. An entry still in the stream, or still pending
-- (a worker may be generating its reply), is not lost.
-- A session found with nothing unanswered (or gone) leaves its partition's waiting set.
-- KEYS[1] session document, KEYS[2] session event stream, KEYS[3] message stream,
-- KEYS[4] waiting set
-- ARGV[1] consumer group, ARGV[2] error event JSON without "message_id" and
-- "event_id", ARGV[3] channel, ARGV[4] event stream MAXLEN (~), ARGV[5] token
-- Returns {CLOSED, seq closed (the new replied_seq)}, {NOT_LOST, replied_seq} (its
-- entry is still there, or held), {NOTHING_WAITS, replied_seq} or {NO_SESSION}.
local CLOSED, NOT_LOST, NOTHING_WAITS, NO_SESSION = 0, 1, 2, 3
local read = redis.call('JSON.GET', KEYS[1], '$.replied_seq', '$.seq')
if not read then
  redis.call('ZREM', KEYS[4], ARGV[5])
  return reply(NO_SESSION)
end
read = cjson.decode(read)
local replied = tonumber(read['$.replied_seq'][1])
local seq = tonumber(read['$.seq'][1])
if seq <= replied then
  redis.call('ZREM', KEYS[4], ARGV[5])
  redis.call('JSON.SET', KEYS[1], '$.waiting', '""')  -- see enqueue.lua
  return reply(NOTHING_WAITS, replied)
end
local head = replied + 1
local found = cjson.decode(redis.call('JSON.GET', KEYS[1], '$.messages[?(@.seq==' .. head .. ')]'))
local message = found[1]
if message == nil or type(message.entry) ~= 'string' then
  return reply(NOT_LOST, replied)
end
local entry = message.entry
if #redis.call('XRANGE', KEYS[3], entry, entry) > 0 then
  return reply(NOT_LOST, replied)
end
if #redis.call('XPENDING', KEYS[3], ARGV[1], entry, entry, 1) > 0 then
  return reply(NOT_LOST, replied)
end
redis.call('JSON.SET', KEYS[1], '$.generator', '""')
redis.call('JSON.SET', KEYS[1], '.replied_seq', head)
local event = '{"message_id":' .. cjson.encode(message.id) .. ',' .. string.sub(ARGV[2], 2)
-- The event stream keeps the longer of its TTL and the session's (see renewal_due,
-- library.lua: finish.lua may have renewed it later than the session).
local pttl = math.max(redis.call('PTTL', KEYS[1]), redis.call('PTTL', KEYS[2]))
append_event(KEYS[2], pttl, ARGV[4], ARGV[3], event)
return reply(CLOSED, head)
