-- Close a session's oldest unanswered message if its stream entry is gone (deleted or
-- trimmed by hand, lost in a failover) and no consumer holds it, so the session's later
-- messages are not held up for ever. An entry still in the stream, or still pending
-- (a worker may be generating its reply), is not lost.
-- A session found with nothing unanswered (or gone) leaves its partition's waiting set.
-- KEYS[1] session document, KEYS[2] session event stream, KEYS[3] message stream,
-- KEYS[4] waiting set
-- ARGV[1] consumer group, ARGV[2] error event JSON without "message_id" and
-- "event_id", ARGV[3] channel, ARGV[4] event stream MAXLEN (~), ARGV[5] token
-- Returns {replied_seq, seq closed (0: none)}; {-1} if the session does not exist.
local pttl = redis.call('PTTL', KEYS[1])
if pttl == -2 then
  redis.call('ZREM', KEYS[4], ARGV[5])
  return {-1}
end
local replied = tonumber(redis.call('JSON.GET', KEYS[1], '.replied_seq'))
local seq = tonumber(redis.call('JSON.GET', KEYS[1], '.seq'))
if seq <= replied then
  redis.call('ZREM', KEYS[4], ARGV[5])
  return {replied, 0}
end
local head = replied + 1
local found = cjson.decode(redis.call('JSON.GET', KEYS[1], '$.messages[?(@.seq==' .. head .. ')]'))
local message = found[1]
if message == nil or type(message.entry) ~= 'string' then
  return {replied, 0}
end
local entry = message.entry
if #redis.call('XRANGE', KEYS[3], entry, entry) > 0 then
  return {replied, 0}
end
if #redis.call('XPENDING', KEYS[3], ARGV[1], entry, entry, 1) > 0 then
  return {replied, 0}
end
redis.call('JSON.SET', KEYS[1], '$.generator', '""')
redis.call('JSON.SET', KEYS[1], '.replied_seq', head)
local event = '{"message_id":' .. cjson.encode(message.id) .. ',' .. string.sub(ARGV[2], 2)
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'event', event)
if pttl > 0 then
  redis.call('PEXPIRE', KEYS[2], pttl)
end
redis.call('SPUBLISH', ARGV[3], '{"event_id":"' .. id .. '",' .. string.sub(event, 2))
return {head, head}
