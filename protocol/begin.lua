-- Start one attempt at generating the reply of a user message, if it is its turn,
-- fencing off older attempts; return the session, which the prompt is built from.
-- One round trip for the turn check, the fence and the read.
-- The session records the attempt now generating ("<seq>:<attempt id>"); emit and finish
-- accept only that attempt's events, so a worker that was taken over while still alive
-- (a long pause) can no longer interleave its tokens with the new attempt's.
-- If an earlier attempt of this very message had started, its partial text may have
-- reached clients: a restart event tells them to discard it.
-- KEYS[1] session document, KEYS[2] session event stream
-- ARGV[1] seq, ARGV[2] attempt ("<seq>:<id>"), ARGV[3] restart event JSON without
-- "event_id", ARGV[4] channel, ARGV[5] event stream MAXLEN (~)
-- Returns {1, session JSON} (first attempt), {2, session JSON} (a restart was emitted),
-- {0} (already answered), {3} (an earlier message is still unanswered: not its turn;
-- nothing changed), {-1} (no such session).
local pttl = redis.call('PTTL', KEYS[1])
if pttl == -2 then
  return {-1}
end
local seq = tonumber(ARGV[1])
local replied = tonumber(redis.call('JSON.GET', KEYS[1], '.replied_seq'))
if seq <= replied then
  return {0}
end
if seq > replied + 1 then
  return {3}
end
local previous = cjson.decode(redis.call('JSON.GET', KEYS[1], '$.generator'))[1] or ''
redis.call('JSON.SET', KEYS[1], '$.generator', cjson.encode(ARGV[2]))
if string.match(previous, '^(%d+):') ~= ARGV[1] then
  return {1, redis.call('JSON.GET', KEYS[1])}
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'event', ARGV[3])
if pttl > 0 then
  redis.call('PEXPIRE', KEYS[2], pttl)
end
redis.call('SPUBLISH', ARGV[4], '{"event_id":"' .. id .. '",' .. string.sub(ARGV[3], 2))
return {2, redis.call('JSON.GET', KEYS[1])}
