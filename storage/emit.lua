-- Publish one reply event of a session: durable in its event stream (for resume), then
-- announced on its channel with the stream id inserted as "event_id". Only the attempt
-- that the session records as generating (begin.lua) may emit.
-- KEYS[1] session document, KEYS[2] session event stream
-- ARGV[1] event JSON object without "event_id", ARGV[2] channel, ARGV[3] stream MAXLEN (~),
-- ARGV[4] attempt ("<seq>:<id>"), ARGV[5] "1" to give the event stream the session's
-- TTL (the first event of an attempt; finish.lua does it again at the end), else "0"
-- Returns {EMITTED, the event id}; {NO_SESSION}; {FENCED} if another attempt has taken
-- over.
local EMITTED, NO_SESSION, FENCED = 0, 1, 2
local generator = redis.call('JSON.GET', KEYS[1], '$.generator')
if not generator then
  return reply(NO_SESSION)
end
if cjson.decode(generator)[1] ~= ARGV[4] then
  return reply(FENCED)
end
local pttl = 0
if ARGV[5] == '1' then
  pttl = redis.call('PTTL', KEYS[1])
end
return reply(EMITTED, append_event(KEYS[2], pttl, ARGV[3], ARGV[2], ARGV[1]))
