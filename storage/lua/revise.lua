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
-- any message but the last, at the bound of versions or of attempts, when the session
-- would hold more than its bound of bytes, when the partition's backlog is full (as
-- enqueue.lua), or when an admission bound is reached (admission, library.lua: a
-- regenerate or an edit asks the model as a message does, and is admitted as one).
-- KEYS: the session document, the message stream, the waiting set, the session's
-- versions document, the session's event stream, and (optional; not on a Redis
-- Cluster) the client's quota key.
-- ARGV[1] a JSON object: call (this call's id: sent again, it returns what it returned
-- and changes nothing, see queueing_read), message_id (of an edit; "" to regenerate), timestamp (the
-- edit's), max_versions (earlier versions of a turn), max_attempts (regenerates and
-- edits of one turn, failed or not: the user message counts them in "revisions"),
-- token, ttl (s), maxlen (stream bound, entries, ~), max_backlog, group, trim_mode,
-- channel, events_maxlen (~), model (that of the stream and the waiting set),
-- default_model, max_bytes, context, system_bytes, content_bytes (an edit's check, as
-- enqueue.lua's), client, rate_limit, rate_window_ms, session_quota, client_quota (as
-- enqueue.lua's), traceparent (optional, as enqueue.lua's); ARGV[2] the edit's content
-- as a JSON string, in UTF-8 rather than \u escapes so that its length is what it adds
-- to the session ("" to regenerate)
-- Returns {REVISED, {seq, message id, entry id, event id}}, or {NO_SESSION},
-- {NOT_LAST_MESSAGE}, {IN_PROGRESS} (a reply is generated or messages wait),
-- {TOO_MANY_VERSIONS}, {OVERLOADED}, {WRONG_MODEL, the session's model},
-- {TOO_LARGE, the bytes the session holds}, {TOO_MANY_ATTEMPTS}, {TOO_LONG, the
-- prompt's tokens}, {RATE_LIMITED, ms}, {SESSION_QUOTA, ms}, {CLIENT_QUOTA, ms}.
local REVISED, NO_SESSION, NOT_LAST_MESSAGE, IN_PROGRESS, TOO_MANY_VERSIONS, OVERLOADED, WRONG_MODEL, TOO_LARGE, TOO_MANY_ATTEMPTS, TOO_LONG, RATE_LIMITED, SESSION_QUOTA, CLIENT_QUOTA = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12
local REFUSALS = {
  no_session = NO_SESSION, wrong_model = WRONG_MODEL, rate = RATE_LIMITED,
  session_quota = SESSION_QUOTA, client_quota = CLIENT_QUOTA,
  repeated = REVISED  -- not a refusal: this very call revised the turn already
}
local session, stream, waiting, versions, events, client_quota = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local p, content = cjson.decode(ARGV[1]), ARGV[2]
local read, window, payload = queueing_read(session, {
  '$.seq', '$.replied_seq', '$.stop_seq', '$.model', '$.size_bytes', '$.system_prompt', '$.rate',
  '$.quota', '$.waiting', '$.last_queued'
}, p, client_quota)
if not read then
  return reply(REFUSALS[window], payload)
end
local seq = tonumber(read['$.seq'][1])
local replied = tonumber(read['$.replied_seq'][1])
if seq == 0 then
  return reply(NOT_LAST_MESSAGE)
end

-- The last user message (seq) and its reply: only replies follow it in history, so the
-- search from the end is short (at most one step per message that waited with it).
local count = redis.call('JSON.ARRLEN', session, '.messages')
local user, user_at, answer, answer_at
local replies = {}
for i = count - 1, 0, -1 do
  local message = cjson.decode(redis.call('JSON.GET', session, '$.messages[' .. i .. ']'))[1]
  if message.role == 'user' and tonumber(message.seq) == seq then
    user, user_at = message, i
    break
  end
  if message.role == 'assistant' then
    replies[#replies + 1] = {message, i}
  end
end
if user == nil or (p.message_id ~= '' and user.id ~= p.message_id) then
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

local edited = p.message_id ~= ''
local revisions = tonumber(user.revisions) or 0
if revisions >= p.max_attempts then
  return reply(TOO_MANY_ATTEMPTS)
end
local too_long = edited and over_context(read, p)
if too_long then
  return reply(TOO_LONG, too_long)
end
-- The turn's earlier versions: those of the versions document (at `path`), then any
-- still inside the message (older data).
local path = '$[' .. cjson.encode(user.id) .. ']'
local stored = 0
if redis.call('EXISTS', versions) == 1 then
  stored = redis.call('JSON.ARRLEN', versions, path)[1] or 0
end
local inside = type(user.versions) == 'table' and user.versions or {}
-- A regenerate after a failed reply replaces nothing: no version to keep.
local keep = answer ~= nil or edited
if keep and stored + #inside >= p.max_versions then
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
  growth = growth + #content - #cjson.encode(user.content)
end
local size = session_size(session, read)
if size + growth > p.max_bytes then
  return reply(TOO_LARGE, size)
end

local backlog = backlog_of(stream, p.group, p.max_backlog)
if backlog >= p.max_backlog then
  return reply(OVERLOADED)
end

if #moving > 0 then
  if stored > 0 then
    redis.call('JSON.ARRAPPEND', versions, path, unpack(moving))
  else
    if redis.call('EXISTS', versions) == 0 then
      redis.call('JSON.SET', versions, '$', '{}')
    end
    redis.call('JSON.SET', versions, path, '[' .. table.concat(moving, ',') .. ']')
  end
end
if #inside > 0 then
  redis.call('JSON.DEL', session, '$.messages[' .. user_at .. '].versions')
end
if answer_at ~= nil then
  redis.call('JSON.ARRPOP', session, '.messages', answer_at)
end
local at = '$.messages[' .. user_at .. ']'
local changes = {}
local function change(path, value)
  changes[#changes + 1] = session
  changes[#changes + 1] = path
  changes[#changes + 1] = value
end
if edited then
  user.content = cjson.decode(content)
  user.timestamp = p.timestamp
  change(at .. '.content', content)
  change(at .. '.timestamp', cjson.encode(p.timestamp))
end

local id = queue_entry(stream, p, seq, user.id)
local now = id_ms(id)
change(at .. '.entry', cjson.encode(id))
change(at .. '.revisions', revisions + 1)
change('$.replied_seq', seq - 1)
change('$.generator', '""')
change('$.crashes', '""')
if tonumber(read['$.stop_seq'][1]) >= seq then
  change('$.stop_seq', seq - 1)
end
change('$.size_bytes', size + growth)
change('$.rate', admitted_window(window, now, p.rate_window_ms))
change('$.client', cjson.encode(p.client))
change('$.versioned', 'true')
if read['$.waiting'][1] ~= waiting then  -- as enqueue.lua
  redis.call('ZADD', waiting, now, p.token)
  change('$.waiting', cjson.encode(waiting))
end
redis.call('JSON.MSET', unpack(changes))
redis.call('EXPIRE', session, p.ttl)
redis.call('EXPIRE', versions, p.ttl)
trim_stream(stream, p.group, p.maxlen, p.trim_mode, backlog + 1)

local shown = public(user)
shown.stopped = nil
local event = '{"type":"revised","message_id":' .. cjson.encode(user.id)
  .. ',"message":' .. cjson.encode(shown)
if keep then
  event = event .. ',"version":' .. moving[#moving]
end
event = event .. ',"version_count":' .. (stored + #moving) .. '}'
local event_id = append_event(events, p.ttl * 1000, p.events_maxlen, p.channel, event)
-- As enqueue.lua's: the same call sent again returns this, and changes nothing.
redis.call('JSON.SET', session, '$.last_queued', cjson.encode({p.call, seq, user.id, id, event_id}))
return reply(REVISED, {seq, user.id, id, event_id})
