-- Accept a user message: number it, queue it for a worker, append it to the history.
-- One atomic step, so a message is in history if and only if it is in the stream.
-- Refused without any change when the session is at its bound of messages, or would
-- hold more than its bound of bytes with this message (session_size, library.lua), when
-- too many of its messages wait, or when its partition's backlog (entries the workers'
-- group has not acknowledged: pending or not yet delivered) is at its bound.
-- trim_stream (trim.lua) trims the stream, never removing an unacknowledged entry.
-- The session joins its partition's set of sessions waiting for replies, swept for
-- messages whose entry is gone (lost.lua).
-- The session's TTL is renewed, and its versions document's with it.
-- KEYS[1] session document, KEYS[2] message stream, KEYS[3] waiting set, KEYS[4] the
-- session's versions document
-- ARGV[1] message JSON object without "seq", ARGV[2] session TTL (s),
-- ARGV[3] max messages waiting for a reply, ARGV[4] stream bound (entries, ~),
-- ARGV[5] token, ARGV[6] message id, ARGV[7] max messages of a session,
-- ARGV[8] max backlog of the partition, ARGV[9] consumer group, ARGV[10] trim mode,
-- ARGV[11] the model whose stream and waiting set KEYS[2] and KEYS[3] are, ARGV[12] the
-- catalog's default model (a session without one has it), ARGV[13] max bytes of a
-- session, ARGV[14] the model's context (tokens; 0: not checked), ARGV[15] the bytes of
-- the deployment's system prompt (a session without its own has it), ARGV[16] the bytes
-- of the message's text
-- Returns {QUEUED, {seq, entry id}}, or {NO_SESSION}, {TOO_MANY_PENDING} (too many
-- wait), {SESSION_FULL}, {TOO_LARGE, the bytes the session holds}, {OVERLOADED} (the
-- partition's backlog is full), {WRONG_MODEL, the session's model} (the keys are another
-- model's: nothing changed), {TOO_LONG, the prompt's tokens} (its system prompt and the
-- message cannot fit the model's context: prompt_tokens, library.lua).
local QUEUED, NO_SESSION, TOO_MANY_PENDING, SESSION_FULL, OVERLOADED, WRONG_MODEL, TOO_LARGE, TOO_LONG = 0, 1, 2, 3, 4, 5, 6, 7
-- One read: {"$.seq": [n], "$.replied_seq": [m], "$.model": [s] or [],
-- "$.size_bytes": [n] or [], "$.system_prompt": [s] or []}; nil: no session.
local read = redis.call(
  'JSON.GET', KEYS[1], '$.seq', '$.replied_seq', '$.model', '$.size_bytes', '$.system_prompt'
)
if not read then
  return reply(NO_SESSION)
end
read = cjson.decode(read)
local model = model_of(read, ARGV[12])
if model ~= ARGV[11] then
  return reply(WRONG_MODEL, model)
end
local context = tonumber(ARGV[14])
if context > 0 then
  local own = read['$.system_prompt'][1]
  local system = (type(own) == 'string' and #own > 0) and #own or tonumber(ARGV[15])
  local tokens = prompt_tokens(system, tonumber(ARGV[16]))
  if tokens > context then
    return reply(TOO_LONG, tokens)
  end
end
local seq = tonumber(read['$.seq'][1])
local replied = tonumber(read['$.replied_seq'][1])
if seq >= tonumber(ARGV[7]) then
  return reply(SESSION_FULL)
end
local size = session_size(KEYS[1], read)
if size + #ARGV[1] > tonumber(ARGV[13]) then
  return reply(TOO_LARGE, size)
end
if seq - replied >= tonumber(ARGV[3]) then
  return reply(TOO_MANY_PENDING)
end

local backlog = backlog_of(KEYS[2], ARGV[9], tonumber(ARGV[8]))
if backlog >= tonumber(ARGV[8]) then
  return reply(OVERLOADED)
end

seq = seq + 1
local id = redis.call('XADD', KEYS[2], '*', 'token', ARGV[5], 'seq', seq, 'message_id', ARGV[6])
redis.call('JSON.SET', KEYS[1], '.seq', seq)
local message = '{"seq":' .. seq .. ',"entry":"' .. id .. '",' .. string.sub(ARGV[1], 2)
redis.call('JSON.ARRAPPEND', KEYS[1], '.messages', message)
redis.call('JSON.SET', KEYS[1], '$.size_bytes', size + #message)
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[4], ARGV[2])
local now = redis.call('TIME')
redis.call('ZADD', KEYS[3], now[1] * 1000 + math.floor(now[2] / 1000), ARGV[5])
trim_stream(KEYS[2], ARGV[9], ARGV[4], ARGV[10], backlog + 1)
return reply(QUEUED, {seq, id})
