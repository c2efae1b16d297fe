-- What every script of this package shares; prepended to each (and trim.lua after it
-- to those that trim a stream) by storage/scripts.py, which runs them by EVALSHA.
--
-- The reply convention: every script returns {status, payload}. status is an integer,
-- one of the script's own statuses (declared at the top of each script; the same names
-- and values as its IntEnum in storage/scripts.py, which decodes every reply); payload
-- is a value or a table, false (nil in Redis) when there is none.

local function reply(status, payload)
  if payload == nil then
    payload = false
  end
  return {status, payload}
end

-- One top-level field of a JSON document (nil if the document has no such field).
local function json_field(key, name)
  return cjson.decode(redis.call('JSON.GET', key, '$.' .. name))[1]
end

-- The bytes session document `key` holds: the JSON text of its messages and of their
-- earlier versions (kept in the versions document), counted in "size_bytes" by the
-- scripts that write them (enqueue.lua, finish.lua, revise.lua), from a JSON.GET `read`
-- that included '$.size_bytes'. A document written before the count was kept is
-- measured once, by the text of its messages (its versions were then inside them).
local function session_size(key, read)
  local size = read['$.size_bytes'][1]
  if type(size) == 'number' then
    return size
  end
  return #redis.call('JSON.GET', key, '$.messages') - 2
end

-- Append an event to a session's event stream and announce it: the stream keeps about
-- `maxlen` events and lives as long as the session (`pttl`, ms: the session's PTTL; no
-- expiry is set if it has none), and the session's sharded channel gets the event with
-- its stream id inserted as its first member, "event_id". `event` is a JSON object
-- without "event_id". Returns the event id.
local function append_event(stream, pttl, maxlen, channel, event)
  local id = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'event', event)
  if pttl > 0 then
    redis.call('PEXPIRE', stream, pttl)
  end
  redis.call('SPUBLISH', channel, '{"event_id":"' .. id .. '",' .. string.sub(event, 2))
  return id
end

-- The entry id that user message `seq` of session document `key` was last queued under
-- (enqueue.lua, revise.lua), as a JSONPath for a JSON.GET that reads other paths too.
local function entry_path(seq)
  return '$.messages[?(@.seq==' .. tonumber(seq) .. '&&@.role=="user")].entry'
end

-- Whether `entry` (a stream entry id; "" checks nothing) is not the one user message
-- `seq` is queued under now, by a JSON.GET `read` that included entry_path(seq): an
-- entry left over from before a regenerate or edit queued the message again. A message
-- without a recorded entry (older data) accepts any.
local function stale_entry(read, seq, entry)
  if entry == '' then
    return false
  end
  local stored = read[entry_path(seq)]
  stored = stored and stored[1]
  return type(stored) == 'string' and stored ~= entry
end

-- The fewest tokens a prompt of a system prompt of `system` bytes and a message of
-- `message` bytes can take, as admission counts it: 4 bytes a token (English prose;
-- most texts take more tokens, so a prompt refused on this count cannot fit), plus the
-- chat template's 4 tokens a message.
local function prompt_tokens(system, message)
  return math.ceil(system / 4) + math.ceil(message / 4) + 8
end
