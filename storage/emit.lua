-- Publish one reply event of a session: durable in its event stream (for resume), then
-- announced on its channel with the stream id inserted as "event_id". Only the attempt
-- that the session records as generating (begin.lua) may emit.
-- KEYS[1] session document, KEYS[2] session event stream
-- ARGV[1] event JSON object without "event_id", ARGV[2] channel, ARGV[3] stream MAXLEN (~),
-- ARGV[4] attempt ("<seq>:<id>")
-- Returns the event id; false if the session no longer exists; 0 if another attempt
-- has taken over.
local pttl = redis.call('PTTL', KEYS[1])
if pttl == -2 then
  return false
end
if cjson.decode(redis.call('JSON.GET', KEYS[1], '$.generator'))[1] ~= ARGV[4] then
  return 0
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'event', ARGV[1])
if pttl > 0 then
  redis.call('PEXPIRE', KEYS[2], pttl)
end
redis.call('SPUBLISH', ARGV[2], '{"event_id":"' .. id .. '",' .. string.sub(ARGV[1], 2))
return id
