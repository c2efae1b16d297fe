-- Ask for the reply of a session's oldest unanswered message to stop.
-- Workers read "stop_seq" when a reply starts; the caller then announces the stop on the
-- stop channel for the worker already generating it.
-- KEYS[1] session document
-- Returns {STOPPED, the seq of the message to stop}, {NOTHING_WAITS} or {NO_SESSION}.
local STOPPED, NOTHING_WAITS, NO_SESSION = 0, 1, 2
if redis.call('EXISTS', KEYS[1]) == 0 then
  return reply(NO_SESSION)
end
local seq = tonumber(redis.call('JSON.GET', KEYS[1], '.seq'))
local replied = tonumber(redis.call('JSON.GET', KEYS[1], '.replied_seq'))
if seq <= replied then
  return reply(NOTHING_WAITS)
end
redis.call('JSON.SET', KEYS[1], '$.stop_seq', replied + 1)
return reply(STOPPED, replied + 1)
