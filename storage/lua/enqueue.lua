-- Admit and accept a user message: check the session's admission (its rate window, its
-- quota and its client's: admission, library.lua), number the message, queue it for a
-- worker, append it to the history. One atomic step, so a message is in history if and
-- only if it is in the stream, and a refusal changes nothing: it spends nothing.
-- Refused when the session's model is not the one its keys are for, when an admission
-- bound is reached, when its system prompt and the message cannot fit the model's
-- context, when the session is at its bound of messages or would hold more than its
-- bound of bytes with this message (session_size, library.lua), when too many of its
-- messages wait, or when its partition's backlog (entries the workers' group has not
-- acknowledged: pending or not yet delivered) is at its bound.
-- The stream entry carries the client's digest, so the worker charges its quota.
-- The session records the last message queued ("last_queued": its id, seq and entry
-- id): the same call sent again (redis-py retries a command whose connection broke,
-- and Redis may have run it) returns that message as queued and changes nothing, so a
-- message is never queued twice (queueing_read, trim.lua).
-- trim_stream (trim.lua) trims the stream, never removing an unacknowledged entry: about
-- one message in TRIM_EVERY looks (those queued in a millisecond that TRIM_EVERY
-- divides), and the workers trim every stream they read now and then too.
-- The session joins its partition's set of sessions waiting for replies, swept for
-- messages whose entry is gone (lost.lua), unless it is in it already ("waiting" names
-- the set; the sweep takes it out once nothing waits). The session's TTL is renewed
-- when due (renewal_due, library.lua: "expires_at" records when it was set to end), and its
-- versions document's with it unless the session says it has none ("versioned": false
-- from its creation until revise.lua writes one).
-- Batched (batch.lua): a call queues one message; its KEYS: the session document, the
-- message stream, the waiting set, the session's
-- versions document, and (optional; not on a Redis Cluster) the client's quota key.
-- Its ARGV[1] the message, a JSON object without "seq"; ARGV[2] a JSON object:
--   ttl (s), max_pending, maxlen (stream bound, entries, ~), token, message_id,
--   max_messages, max_backlog, group, trim_mode, model (that of the stream and the
--   waiting set), default_model (a session without one has it), max_bytes, context (the
--   model's, tokens; 0: not checked), system_bytes (the deployment's system prompt; a
--   session without its own has it), content_bytes (the message's text), client (its
--   digest; "": none), rate_limit, rate_window_ms, session_quota, client_quota, and
--   traceparent (optional: the W3C traceparent the entry carries when tracing is on)
-- Each call returns {QUEUED, {seq, entry id}}, or {NO_SESSION}, {TOO_MANY_PENDING},
-- {SESSION_FULL}, {TOO_LARGE, the bytes the session holds}, {OVERLOADED},
-- {WRONG_MODEL, the session's model} (nothing changed), {TOO_LONG, the prompt's tokens}
-- (over_context, library.lua), {RATE_LIMITED, ms}, {SESSION_QUOTA, ms},
-- {CLIENT_QUOTA, ms} (ms until it would admit).
local QUEUED, NO_SESSION, TOO_MANY_PENDING, SESSION_FULL, OVERLOADED, WRONG_MODEL, TOO_LARGE, TOO_LONG, RATE_LIMITED, SESSION_QUOTA, CLIENT_QUOTA = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10
local REFUSALS = {
  no_session = NO_SESSION, wrong_model = WRONG_MODEL, rate = RATE_LIMITED,
  session_quota = SESSION_QUOTA, client_quota = CLIENT_QUOTA,
  repeated = QUEUED  -- not a refusal: this very call was queued already
}
local TRIM_EVERY = 16
-- One call (run_batch, batch.lua: its keys and arguments as KEYS and ARGV).
local function enqueue(KEYS, ARGV)
  local session, stream, waiting, versions, client_quota = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
  local body, p = ARGV[1], cjson.decode(ARGV[2])

  local read, window, payload = queueing_read(session, {
    '$.seq', '$.replied_seq', '$.model', '$.size_bytes', '$.system_prompt', '$.rate', '$.quota',
    '$.versioned', '$.waiting', '$.expires_at', '$.last_queued'
  }, p, client_quota)
  if not read then
    return reply(REFUSALS[window], payload)
  end
  local too_long = over_context(read, p)
  if too_long then
    return reply(TOO_LONG, too_long)
  end
  local seq = tonumber(read['$.seq'][1])
  local replied = tonumber(read['$.replied_seq'][1])
  if seq >= p.max_messages then
    return reply(SESSION_FULL)
  end
  local size = session_size(session, read)
  if size + #body > p.max_bytes then
    return reply(TOO_LARGE, size)
  end
  if seq - replied >= p.max_pending then
    return reply(TOO_MANY_PENDING)
  end
  local backlog = backlog_of(stream, p.group, p.max_backlog)
  if backlog >= p.max_backlog then
    return reply(OVERLOADED)
  end

  seq = seq + 1
  local id = queue_entry(stream, p, seq, p.message_id)
  local now = id_ms(id)
  local message = '{"seq":' .. seq .. ',"entry":"' .. id .. '",' .. string.sub(body, 2)
  redis.call('JSON.ARRAPPEND', session, '$.messages', message)
  local changes = {
    session, '$.seq', seq, session, '$.size_bytes', size + #message,
    session, '$.rate', admitted_window(window, now, p.rate_window_ms),
    session, '$.client', cjson.encode(p.client),
    session, '$.last_queued', cjson.encode({p.message_id, seq, id})
  }
  if read['$.waiting'][1] ~= waiting then
    redis.call('ZADD', waiting, now, p.token)
    changes[#changes + 1], changes[#changes + 2], changes[#changes + 3] = session, '$.waiting', cjson.encode(waiting)
  end
  if renewal_due(read['$.expires_at'][1], now, p.ttl * 1000) then
    redis.call('EXPIRE', session, p.ttl)
    if read['$.versioned'][1] ~= false then  -- a session from before the flag: renewed
      redis.call('EXPIRE', versions, p.ttl)
    end
    changes[#changes + 1], changes[#changes + 2], changes[#changes + 3] = session, '$.expires_at', now + p.ttl * 1000
  end
  redis.call('JSON.MSET', unpack(changes))
  if now % TRIM_EVERY == 0 then
    trim_stream(stream, p.group, p.maxlen, p.trim_mode, backlog + 1)
  end
  return reply(QUEUED, {seq, id})
end

return run_batch(enqueue)
