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
-- Returns {FINISHED, the event id}; {ALREADY_RECORDED}; {NO_SESSION}; {FENCED} if
-- another attempt has taken over; {NOT_YOUR_TURN} (with "") if an earlier message is
-- unanswered.
local FINISHED, ALREADY_RECORDED, NO_SESSION, FENCED, NOT_YOUR_TURN = 0, 1, 2, 3, 4
local pttl = redis.call('PTTL', KEYS[1])
if pttl == -2 then
  return reply(NO_SESSION)
end
local seq = tonumber(ARGV[1])
local forced = ARGV[6] == ''
local replied = tonumber(redis.call('JSON.GET', KEYS[1], '.replied_seq'))
if replied == nil and forced then
  replied = seq - 1
end
if seq <= replied then
  return reply(ALREADY_RECORDED)
end
if forced and seq > replied + 1 then
  return reply(NOT_YOUR_TURN)
end
if forced then
  redis.call('JSON.SET', KEYS[1], '$.generator', '""')
elseif json_field(KEYS[1], 'generator') ~= ARGV[6] then
  return reply(FENCED)
end
if ARGV[2] ~= '' then
  redis.call('JSON.ARRAPPEND', KEYS[1], '.messages', ARGV[2])
end
redis.call('JSON.SET', KEYS[1], '.replied_seq', seq)
return reply(FINISHED, append_event(KEYS[2], pttl, ARGV[5], ARGV[4], ARGV[3]))
