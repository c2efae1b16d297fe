-- Ask for the reply of a session's oldest unanswered message to stop.
-- Workers read "stop_seq" when a reply starts; the caller then announces the stop on the
-- stop channel for the worker already generating it.
-- KEYS[1] session document
-- Returns the seq of the message to stop; 0 if nothing waits for a reply; -1 if the
-- session does not exist.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
local seq = tonumber(redis.call('JSON.GET', KEYS[1], '.seq'))
local replied = tonumber(redis.call('JSON.GET', KEYS[1], '.replied_seq'))
if seq <= replied then
  return 0
end
redis.call('JSON.SET', KEYS[1], '$.stop_seq', replied + 1)
return replied + 1
