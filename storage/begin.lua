-- Start one attempt at generating the reply of a user message, if it is its turn,
-- fencing off older attempts; return the session, which the prompt is built from.
-- One round trip for the turn check, the fence and the read.
-- The session records the attempt now generating ("<seq>:<attempt id>"); emit and finish
-- accept only that attempt's events, so a worker that was taken over while still alive
-- (a long pause) can no longer interleave its tokens with the new attempt's.
-- If an earlier attempt of this very message had started, its partial text may have
-- reached clients: a restart event tells them to discard it. That earlier attempt
-- either failed in a live worker, which then recorded "<seq>:failed" (fail.lua, and
-- counted it in the entry's delivery count), or its worker died or lost Redis
-- mid-reply: such crashes are counted in "crashes" ("<seq>:<n>"). An entry taken over
-- while it waited its turn had no attempt, and nothing is counted.
-- KEYS[1] session document, KEYS[2] session event stream
-- ARGV[1] seq, ARGV[2] attempt ("<seq>:<id>"), ARGV[3] restart event JSON without
-- "event_id", ARGV[4] channel, ARGV[5] event stream MAXLEN (~), ARGV[6] messages to
-- return (the newest; 0: all), ARGV[7] the stream entry id of this attempt's message
-- ("": not checked): fencing by entry, see stale_entry (library.lua)
-- Returns {STARTED or RESTARTED, {crashes, fields JSON, messages JSON, message count}}:
-- STARTED for a first attempt, RESTARTED if a restart was emitted; crashes the attempts
-- at this message whose worker died, fields {"stop_seq": n, "replied_seq": n, "model": s,
-- "system_prompt": s, "summary": the rolling summary or null} (a field the session
-- lacks is left out). Or {ANSWERED} (already answered), {NOT_YET} (an earlier message
-- is still unanswered: not its turn; nothing changed), {NO_SESSION}, {STALE} (the entry
-- is not the one the message is queued under now: nothing changed; ack it).
local STARTED, RESTARTED, ANSWERED, NOT_YET, NO_SESSION, STALE = 0, 1, 2, 3, 4, 5
-- The session's scalar fields that the turn and the reply need, and its attempt
-- records, in one read.
local FIELDS = {'replied_seq', 'stop_seq', 'model', 'system_prompt', 'summary'}
local paths = {'$.generator', '$.crashes'}
for _, name in ipairs(FIELDS) do
  paths[#paths + 1] = '$.' .. name
end
if ARGV[7] ~= '' then
  paths[#paths + 1] = entry_path(ARGV[1])
end
local read = redis.call('JSON.GET', KEYS[1], unpack(paths))
if not read then
  return reply(NO_SESSION)
end
read = cjson.decode(read)
if stale_entry(read, ARGV[1], ARGV[7]) then
  return reply(STALE)
end
local seq = tonumber(ARGV[1])
local replied = tonumber(read['$.replied_seq'][1])
if seq <= replied then
  return reply(ANSWERED)
end
if seq > replied + 1 then
  return reply(NOT_YET)
end
local previous = read['$.generator'][1]
if type(previous) ~= 'string' then
  previous = ''
end
redis.call('JSON.SET', KEYS[1], '$.generator', cjson.encode(ARGV[2]))
local status = STARTED
if string.match(previous, '^(%d+):') == ARGV[1] then
  status = RESTARTED
  append_event(KEYS[2], redis.call('PTTL', KEYS[1]), ARGV[5], ARGV[4], ARGV[3])
end
local crashes = 0
if status == RESTARTED then
  local record = read['$.crashes'][1]
  local crashed_seq, n = string.match(type(record) == 'string' and record or '', '^(%d+):(%d+)$')
  if crashed_seq == ARGV[1] then
    crashes = tonumber(n)
  end
  if string.sub(previous, -7) ~= ':failed' then
    crashes = crashes + 1
    redis.call('JSON.SET', KEYS[1], '$.crashes', cjson.encode(ARGV[1] .. ':' .. crashes))
  end
end
local fields = {}
for _, name in ipairs(FIELDS) do
  fields[name] = read['$.' .. name][1]
end
local count = redis.call('JSON.ARRLEN', KEYS[1], '.messages')
local window = tonumber(ARGV[6])
local messages
if window > 0 and count > window then
  messages = redis.call('JSON.GET', KEYS[1], '$.messages[' .. (count - window) .. ':]')
else
  messages = redis.call('JSON.GET', KEYS[1], '.messages')
end
return reply(status, {crashes, cjson.encode(fields), messages, count})
