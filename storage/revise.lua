-- Regenerate or edit: ask again for the reply to a session's last user message, keeping
-- the reply it replaces (and, for an edit, the text it replaces) as an earlier version
-- of the turn. One atomic step on the session's slot:
-- - the reply leaves the history and joins the turn's earlier versions, with the user's
--   text then: {content, timestamp, reply} (reply null if it got none: failed). They
--   are kept outside the session document, in the session's versions document
--   ({"<message id>": [version, ...]}, oldest first), which the worker's read of the
--   history (begin.lua) never loads; a session written before they moved there has
--   them in the message's "versions": they move over, after those already there;
-- - an edit replaces the user message's content and timestamp;
-- - the message is queued again under the same seq and id: a new entry in the message
--   stream (its "entry" in history), "replied_seq" goes back to seq - 1, and the
--   attempt records ("generator", "crashes") and a stop of this seq are cleared, so
--   the next attempt begins afresh and finish.lua records its reply exactly once;
-- - the session's byte count ("size_bytes", see session_size in library.lua) follows;
--   its TTL is renewed, and its versions document's with it;
-- - a "revised" event goes to the session's event stream and channel: the user message
--   as it now stands (without versions), the version just kept ("version", absent if
--   none was) and how many the turn keeps now ("version_count"), so that a client can
--   tell a replayed revision from a new one; every socket of the session sees it, and
--   resume replays it.
-- Refused without any change unless every message of the session is answered, or for
-- any message but the last, at the bound of versions, when the session would hold more
-- than its bound of bytes, or when the partition's backlog is full (as enqueue.lua).
-- KEYS[1] session document, KEYS[2] message stream, KEYS[3] waiting set,
-- KEYS[4] the session's versions document, KEYS[5] session event stream
-- ARGV[1] message id of an edit ("" to regenerate), ARGV[2] the edit's content as a JSON
-- string, in UTF-8 rather than \u escapes so that its length is what it adds to the
-- session ("" to regenerate), ARGV[3] the edit's timestamp, ARGV[4] max earlier versions
-- of a turn, ARGV[5] token, ARGV[6] session TTL (s), ARGV[7] stream bound (entries, ~),
-- ARGV[8] max backlog of the partition, ARGV[9] consumer group, ARGV[10] trim mode,
-- ARGV[11] channel, ARGV[12] event stream MAXLEN (~), ARGV[13] the model of KEYS[2]
-- and KEYS[3], ARGV[14] the catalog's default model, ARGV[15] max bytes of a session
-- Returns {REVISED, {seq, message id, entry id, event id}}, or {NO_SESSION},
-- {NOT_LAST_MESSAGE}, {IN_PROGRESS} (a reply is generated or messages wait),
-- {TOO_MANY_VERSIONS}, {OVERLOADED}, {WRONG_MODEL, the session's model},
-- {TOO_LARGE, the bytes the session holds}.
local REVISED, NO_SESSION, NOT_LAST_MESSAGE, IN_PROGRESS, TOO_MANY_VERSIONS, OVERLOADED, WRONG_MODEL, TOO_LARGE = 0, 1, 2, 3, 4, 5, 6, 7
local read = redis.call(
  'JSON.GET', KEYS[1], '$.seq', '$.replied_seq', '$.stop_seq', '$.model', '$.size_bytes')
if not read then
  return reply(NO_SESSION)
end
read = cjson.decode(read)
local model = model_of(read, ARGV[14])
if model ~= ARGV[13] then
  return reply(WRONG_MODEL, model)
end
local seq = tonumber(read['$.seq'][1])
local replied = tonumber(read['$.replied_seq'][1])
if seq == 0 then
  return reply(NOT_LAST_MESSAGE)
end

-- The last user message (seq) and its reply: only replies follow it in history, so the
-- search from the end is short (at most one step per message that waited with it).
local count = redis.call('JSON.ARRLEN', KEYS[1], '.messages')
local user, user_at, answer, answer_at
local replies = {}
for i = count - 1, 0, -1 do
  local message = cjson.decode(redis.call('JSON.GET', KEYS[1], '$.messages[' .. i .. ']'))[1]
  if message.role == 'user' and tonumber(message.seq) == seq then
    user, user_at = message, i
    break
  end
  if message.role == 'assistant' then
    replies[#replies + 1] = {message, i}
  end
end
if user == nil or (ARGV[1] ~= '' and user.id ~= ARGV[1]) then
  return reply(NOT_LAST_MESSAGE)
end
if seq > replied then
  return reply(IN_PROGRESS)
end
for _, found in ipairs(replies) do
  if found[1].reply_to == user.id then
    answer, answer_at = found[1], found[2]
  end
end

local edited = ARGV[1] ~= ''
-- The turn's earlier versions: those of the versions document (at `path`), then any
-- still inside the message (older data).
local path = '$[' .. cjson.encode(user.id) .. ']'
local stored = 0
if redis.call('EXISTS', KEYS[4]) == 1 then
  stored = redis.call('JSON.ARRLEN', KEYS[4], path)[1] or 0
end
local inside = type(user.versions) == 'table' and user.versions or {}
-- A regenerate after a failed reply replaces nothing: no version to keep.
local keep = answer ~= nil or edited
if keep and stored + #inside >= tonumber(ARGV[4]) then
  return reply(TOO_MANY_VERSIONS)
end

-- A message as clients see it (ChatMessage's fields but versions).
local function public(message)
  local shown = {
    id = message.id, role = message.role, content = message.content,
    timestamp = message.timestamp, stopped = message.stopped == true,
  }
  if type(message.truncated) == 'string' then
    shown.truncated = message.truncated
  end
  if type(message.model) == 'string' then
    shown.model = message.model
  end
  return shown
end

-- What the session holds after this step: the version kept, less the reply that leaves
-- the history, and an edit's new text for its old one.
local moving = {}
for _, version in ipairs(inside) do
  moving[#moving + 1] = cjson.encode(version)
end
local growth = 0
if keep then
  moving[#moving + 1] = cjson.encode({
    content = user.content, timestamp = user.timestamp,
    reply = answer ~= nil and public(answer) or cjson.null,
  })
  growth = #moving[#moving]
end
if answer ~= nil then
  growth = growth - #cjson.encode(answer)
end
if edited then
  growth = growth + #ARGV[2] - #cjson.encode(user.content)
end
local size = session_size(KEYS[1], read)
if size + growth > tonumber(ARGV[15]) then
  return reply(TOO_LARGE, size)
end

local backlog = backlog_of(KEYS[2], ARGV[9], tonumber(ARGV[8]))
if backlog >= tonumber(ARGV[8]) then
  return reply(OVERLOADED)
end

if #moving > 0 then
  if stored > 0 then
    redis.call('JSON.ARRAPPEND', KEYS[4], path, unpack(moving))
  else
    if redis.call('EXISTS', KEYS[4]) == 0 then
      redis.call('JSON.SET', KEYS[4], '$', '{}')
    end
    redis.call('JSON.SET', KEYS[4], path, '[' .. table.concat(moving, ',') .. ']')
  end
end
if #inside > 0 then
  redis.call('JSON.DEL', KEYS[1], '$.messages[' .. user_at .. '].versions')
end
if answer_at ~= nil then
  redis.call('JSON.ARRPOP', KEYS[1], '.messages', answer_at)
end
if edited then
  user.content = cjson.decode(ARGV[2])
  user.timestamp = ARGV[3]
  redis.call('JSON.SET', KEYS[1], '$.messages[' .. user_at .. '].content', ARGV[2])
  redis.call('JSON.SET', KEYS[1], '$.messages[' .. user_at .. '].timestamp', cjson.encode(ARGV[3]))
end

local id = redis.call('XADD', KEYS[2], '*', 'token', ARGV[5], 'seq', seq, 'message_id', user.id)
redis.call('JSON.SET', KEYS[1], '$.messages[' .. user_at .. '].entry', cjson.encode(id))
redis.call('JSON.SET', KEYS[1], '.replied_seq', seq - 1)
redis.call('JSON.SET', KEYS[1], '$.generator', '""')
redis.call('JSON.SET', KEYS[1], '$.crashes', '""')
if tonumber(read['$.stop_seq'][1]) >= seq then
  redis.call('JSON.SET', KEYS[1], '$.stop_seq', seq - 1)
end
redis.call('JSON.SET', KEYS[1], '$.size_bytes', size + growth)
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('EXPIRE', KEYS[4], ARGV[6])
local now = redis.call('TIME')
redis.call('ZADD', KEYS[3], now[1] * 1000 + math.floor(now[2] / 1000), ARGV[5])
trim_stream(KEYS[2], ARGV[9], ARGV[7], ARGV[10], backlog + 1)

local shown = public(user)
shown.stopped = nil
local event = '{"type":"revised","message_id":' .. cjson.encode(user.id)
  .. ',"message":' .. cjson.encode(shown)
if keep then
  event = event .. ',"version":' .. moving[#moving]
end
event = event .. ',"version_count":' .. (stored + #moving) .. '}'
local event_id = append_event(KEYS[5], redis.call('PTTL', KEYS[1]), ARGV[12], ARGV[11], event)
return reply(REVISED, {seq, user.id, id, event_id})
