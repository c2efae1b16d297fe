-- Close a user message: record its reply (if any), counted in the session's bytes, and
-- emit the closing event, once.
-- Replies are recorded in seq order, so "seq <= replied_seq" means this one already was:
-- a retried or re-claimed message then changes nothing and emits nothing.
-- KEYS[1] session document, KEYS[2] session event stream
-- ARGV[1] seq, ARGV[2] reply message JSON or "" for none, ARGV[3] event JSON without
-- "event_id", ARGV[4] channel, ARGV[5] event stream MAXLEN (~), ARGV[6] attempt
-- ("<seq>:<id>", see begin.lua): only the attempt the session records may finish; ""
-- closes the message whatever attempt runs (a dead-lettered entry, which may never
-- have begun) once it is its turn, fences every attempt, and tolerates an unreadable
-- "replied_seq" (which it mends).
-- KEYS[3] (optional) the message stream of the user message's entry, ARGV[7] its
-- consumer group, ARGV[8] the entry id: the entry is acknowledged (XACK) in the same
-- script once the message is closed (FINISHED or ALREADY_RECORDED), or its session gone.
-- The entry is also fenced (stale_entry, library.lua): an entry left over from before a
-- regenerate or edit queued the message again closes nothing and is acknowledged (a
-- worker that gave up on the old turn and died before its ack cannot close the new one).
-- Returns {FINISHED, the event id}; {ALREADY_RECORDED}; {NO_SESSION}; {FENCED} if
-- another attempt has taken over; {NOT_YOUR_TURN} (with "") if an earlier message is
-- unanswered; {STALE} (acknowledged, nothing changed).
local FINISHED, ALREADY_RECORDED, NO_SESSION, FENCED, NOT_YOUR_TURN, STALE = 0, 1, 2, 3, 4, 5
local function acked(status, payload)
  if KEYS[3] then
    redis.call('XACK', KEYS[3], ARGV[7], ARGV[8])
  end
  return reply(status, payload)
end
-- replied_seq, generator and the message's entry in one read:
-- {"$.replied_seq": [n], "$.generator": [g], <entry_path>: [id]}
local entry = KEYS[3] and ARGV[8] or ''
local read
if entry ~= '' then
  read = redis.call('JSON.GET', KEYS[1], '$.replied_seq', '$.generator', entry_path(ARGV[1]))
else
  read = redis.call('JSON.GET', KEYS[1], '$.replied_seq', '$.generator')
end
if not read then
  return acked(NO_SESSION)
end
read = cjson.decode(read)
if stale_entry(read, ARGV[1], entry) then
  return acked(STALE)
end
local seq = tonumber(ARGV[1])
local forced = ARGV[6] == ''
local replied = read['$.replied_seq'][1]
replied = replied ~= nil and tonumber(replied) or nil
if replied == nil and forced then
  replied = seq - 1
end
if seq <= replied then
  return acked(ALREADY_RECORDED)
end
if forced and seq > replied + 1 then
  return reply(NOT_YOUR_TURN)
end
if forced then
  redis.call('JSON.SET', KEYS[1], '$.generator', '""')
elseif read['$.generator'][1] ~= ARGV[6] then
  return reply(FENCED)
end
if ARGV[2] ~= '' then
  redis.call('JSON.ARRAPPEND', KEYS[1], '.messages', ARGV[2])
  -- The session's byte count (session_size, library.lua): a document without one is
  -- measured whole by its next message.
  redis.call('JSON.NUMINCRBY', KEYS[1], '$.size_bytes', #ARGV[2])
end
redis.call('JSON.SET', KEYS[1], '.replied_seq', seq)
local pttl = redis.call('PTTL', KEYS[1])
return acked(FINISHED, append_event(KEYS[2], pttl, ARGV[5], ARGV[4], ARGV[3]))
