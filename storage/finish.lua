-- Close a user message: record its reply (if any) and emit the closing event, once.
-- Replies are recorded in seq order, so "seq <= replied_seq" means this one already was:
-- a retried or re-claimed message then changes nothing and emits nothing.
-- KEYS[1] session document, KEYS[2] session event stream
-- ARGV[1] seq, ARGV[2] reply message JSON or "" for none, ARGV[3] event JSON without
-- "event_id", ARGV[4] channel, ARGV[5] event stream MAXLEN (~), ARGV[6] attempt
-- ("<seq>:<id>", see begin.lua): only the attempt the session records may finish; ""
-- closes the message whatever attempt runs (a dead-lettered entry, which may never
-- have begun) once it is its turn, fences every attempt, and tolerates an unreadable
-- "replied_seq" (which it mends).
-- Returns the event id; 0 if already recorded; -1 if the session does not exist; -2 if
-- another attempt has taken over; -3 (with "") if an earlier message is unanswered.
local pttl = redis.call('PTTL', KEYS[1])
if pttl == -2 then
  return -1
end
local seq = tonumber(ARGV[1])
local forced = ARGV[6] == ''
local replied = tonumber(redis.call('JSON.GET', KEYS[1], '.replied_seq'))
if replied == nil and forced then
  replied = seq - 1
end
if seq <= replied then
  return 0
end
if forced and seq > replied + 1 then
  return -3
end
if forced then
  redis.call('JSON.SET', KEYS[1], '$.generator', '""')
elseif cjson.decode(redis.call('JSON.GET', KEYS[1], '$.generator'))[1] ~= ARGV[6] then
  return -2
end
if ARGV[2] ~= '' then
  redis.call('JSON.ARRAPPEND', KEYS[1], '.messages', ARGV[2])
end
redis.call('JSON.SET', KEYS[1], '.replied_seq', seq)
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'event', ARGV[3])
if pttl > 0 then
  redis.call('PEXPIRE', KEYS[2], pttl)
end
redis.call('SPUBLISH', ARGV[4], '{"event_id":"' .. id .. '",' .. string.sub(ARGV[3], 2))
return id
