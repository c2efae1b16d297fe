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
-- `maxlen` events and lives as long as the session (`pttl`, ms: the session's TTL, the
-- time to live it was given last; no expiry is set if 0), and the session's sharded channel gets the event with
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

-- append_event for several events (a table of JSON objects without "event_id", in
-- order) announced together: one message on the channel, each event with its
-- "event_id" on a line of its own (JSON text holds no raw newline); the stream gets
-- `pttl` with the first. Returns the last event's id.
local function append_events(stream, pttl, maxlen, channel, events)
  local published, id = {}, nil
  for i, event in ipairs(events) do
    id = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'event', event)
    if i == 1 and pttl > 0 then
      redis.call('PEXPIRE', stream, pttl)
    end
    published[i] = '{"event_id":"' .. id .. '",' .. string.sub(event, 2)
  end
  redis.call('SPUBLISH', channel, table.concat(published, '\n'))
  return id
end

-- Renewing a TTL lazily: a key that the session's activity keeps alive for `ttl_ms`
-- (the session, its versions, its event stream) is renewed by that activity only once
-- less than `ttl_ms` minus the slack (1% of it, at most 10 s) is left, by the expiry
-- its session document records ("at", ms since the epoch; not a number: unknown). So
-- a message does not pay an EXPIRE every time, and each key lives at least
-- SESSION_TTL_SECONDS minus the slack after the last message. Returns whether a renewal
-- is due at `now` (ms).
local function renewal_due(at, now, ttl_ms)
  return type(at) ~= 'number' or at - now < ttl_ms - math.min(math.floor(ttl_ms / 100), 10000)
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

-- The prompt_tokens of a message of p.content_bytes with its session's system prompt
-- (its own, from a `read` that included '$.system_prompt', else the deployment's of
-- p.system_bytes) if they are over the model's context, p.context tokens (0: not
-- checked); nil if they fit.
local function over_context(read, p)
  if p.context <= 0 then
    return nil
  end
  local own = read['$.system_prompt'][1]
  local system = (type(own) == 'string' and #own > 0) and #own or p.system_bytes
  local tokens = prompt_tokens(system, p.content_bytes)
  return tokens > p.context and tokens or nil
end

-- Redis's clock (ms since the epoch), read at most once a script: `clock()` calls TIME
-- on its first use only.
local function lazy_clock()
  local now
  return function()
    if now == nil then
      local t = redis.call('TIME')
      now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    end
    return now
  end
end

-- Redis's clock (ms since the epoch) when stream entry `id` was added: its first part.
local function id_ms(id)
  return tonumber(string.match(id, '^(%d+)-'))
end

-- Queue a user message for a worker (enqueue.lua, revise.lua): an entry of its model's
-- message stream with the session (p.token), the message's number and id, and the
-- digest of the client whose quota pays for the reply (p.client); and, when the server
-- traces the message, the W3C traceparent of its enqueue span (p.traceparent; absent
-- while tracing is off), which the worker continues. Returns the entry id.
local function queue_entry(stream, p, seq, message_id)
  if p.traceparent then
    return redis.call(
      'XADD', stream, '*', 'token', p.token, 'seq', seq, 'message_id', message_id,
      'client', p.client, 'traceparent', p.traceparent
    )
  end
  return redis.call(
    'XADD', stream, '*', 'token', p.token, 'seq', seq, 'message_id', message_id, 'client', p.client
  )
end

-- The admissions of a session's rate window that still count at `now` (ms): a list of
-- the times (ms) each stops counting, oldest first.
local function counting(window, now)
  local kept = {}
  for _, until_ms in ipairs(window) do
    if until_ms > now then
      kept[#kept + 1] = until_ms
    end
  end
  return kept
end

-- Admission of one message (a new one, a regenerate or an edit) of a session, from a
-- JSON.GET `read` of its document that included '$.rate' (the rate window: when each
-- admission of the window stops counting, ms) and '$.quota' ({"used": model tokens,
-- "renews": ms} of the period), and `client_quota`, the key of its client's quota
-- (nil: not checked here, on a Redis Cluster where it lives in another slot). `p` holds
-- the limits: rate_limit (admissions per window), session_quota and client_quota
-- (model tokens per period; 0: none). `clock` is a lazy_clock(): Redis's clock is read
-- only when a bound is reached, to tell whether it has renewed.
-- Returns nil and the window when admitted (nothing is written: record it with
-- admitted_window once the message is queued); else the refusal, 'session_quota',
-- 'client_quota' or 'rate', and the ms until it would admit.
local function admission(read, p, client_quota, clock)
  local quota = read['$.quota'][1]
  if p.session_quota > 0 and type(quota) == 'table' and quota.used >= p.session_quota
      and quota.renews > clock() then
    return 'session_quota', quota.renews - clock()
  end
  if client_quota and p.client_quota > 0 then
    local used = tonumber(redis.call('GET', client_quota) or '0')
    if used >= p.client_quota then
      return 'client_quota', math.max(redis.call('PTTL', client_quota), 1)
    end
  end
  local window = read['$.rate'][1]
  if type(window) ~= 'table' then
    window = {}
  end
  if #window >= p.rate_limit then
    window = counting(window, clock())
    if #window >= p.rate_limit then
      return 'rate', math.max(window[1] - clock(), 1)
    end
  end
  return nil, window
end

-- The rate window of admission() with one more admission at `now` (ms: the queued
-- entry's time), counting `window_ms`, as the JSON text to store in '$.rate'.
local function admitted_window(window, now, window_ms)
  window = counting(window, now)
  window[#window + 1] = now + window_ms
  return cjson.encode(window)
end

-- A session's quota of model tokens after a charge of `units` at `now` (ms), from a
-- JSON.GET `read` that included '$.quota'; a period of `period_ms` starts with the first
-- charge after the last one ended. The JSON text to store in '$.quota'.
local function charged_quota(read, units, now, period_ms)
  local quota = read['$.quota'][1]
  if type(quota) ~= 'table' or quota.renews <= now then
    quota = {used = 0, renews = now + period_ms}
  end
  quota.used = quota.used + units
  return cjson.encode(quota)
end

-- Charge `units` to a client's quota key (a counter that lives one period from its
-- first charge). Returns the units used in the period.
local function charge_client(key, units, period_ms)
  local used = redis.call('INCRBY', key, units)
  if used == units then
    redis.call('PEXPIRE', key, period_ms)
  end
  return used
end
