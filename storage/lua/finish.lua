-- Close a user message: record its reply (if any), counted in the session's bytes, emit
-- its last events (the rest of its text, if any, then the closing event; the event
-- stream's TTL renewed when due, see renewal_due in library.lua), charge the
-- model tokens its requests cost, and acknowledge its stream entry: once, in one step.
-- Replies are recorded in seq order, so "seq <= replied_seq" means this one already was:
-- a retried or re-claimed message then records and emits nothing.
-- The charge is made whatever the outcome (the model was asked all the same): the
-- session's quota ("quota" in its document, charged_quota in library.lua) unless the
-- session is gone, and its client's (charge_client) when its key is given.
-- Batched (batch.lua): a call closes one message; its KEYS: the session document, the
-- session's event stream, then if p.ack the message stream of the user message's entry,
-- then if p.charge_client the client's quota key.
-- Its ARGV[1] a JSON object: seq, attempt ("<seq>:<id>", see begin.lua: only the attempt
--   the session records may finish; "" closes the message whatever attempt runs (a
--   dead-lettered entry, which may never have begun) once it is its turn, fences every
--   attempt, and tolerates an unreadable "replied_seq", which it mends), channel,
--   events_maxlen (~), ttl (the session's, s), group, entry (the entry id: ""
--   none), ack (acknowledge the entry once the message is closed (FINISHED or
--   ALREADY_RECORDED), or its session gone), charge_client, units (model tokens to
--   charge), period_ms (a quota's period)
-- ARGV[2] the reply message JSON, or "" for none; ARGV[3], ARGV[4], ...: the events to
-- emit, JSON objects without "event_id", the closing one last (announced together:
-- append_events, library.lua).
-- The entry is also fenced (stale_entry, library.lua): an entry left over from before a
-- regenerate or edit queued the message again closes nothing and is acknowledged (a
-- worker that gave up on the old turn and died before its ack cannot close the new one).
-- Each call returns {FINISHED, the closing event's id}; {ALREADY_RECORDED}; {NO_SESSION}; {FENCED}
-- if another attempt has taken over; {NOT_YOUR_TURN} (with "") if an earlier message is
-- unanswered; {STALE} (acknowledged, nothing changed).
local FINISHED, ALREADY_RECORDED, NO_SESSION, FENCED, NOT_YOUR_TURN, STALE = 0, 1, 2, 3, 4, 5
-- One call (run_batch, batch.lua: its keys and arguments as KEYS and ARGV).
local function finish(KEYS, ARGV)
  local session, events = KEYS[1], KEYS[2]
  local p, message = cjson.decode(ARGV[1]), ARGV[2]
  local stream = p.ack and KEYS[3] or nil
  local client_quota = p.charge_client and KEYS[p.ack and 4 or 3] or nil

  -- Charge the client, and the session too if its `read` is given (FINISHED charges the
  -- session with its other writes), acknowledge the entry (if asked), and answer.
  local function closed(status, payload, read)
    if client_quota and p.units > 0 then
      charge_client(client_quota, p.units, p.period_ms)
    end
    if read and p.units > 0 then
      local quota = charged_quota(read, p.units, lazy_clock()(), p.period_ms)
      redis.call('JSON.SET', session, '$.quota', quota)
    end
    if stream then
      redis.call('XACK', stream, p.group, p.entry)
    end
    return reply(status, payload)
  end

  -- What the step needs of the session in one read: {"$.replied_seq": [n],
  -- "$.generator": [g], "$.size_bytes": [n] or [], "$.quota": [q] or [], <entry_path>: [id]}
  local entry = stream and p.entry or ''
  local paths = {'$.replied_seq', '$.generator', '$.size_bytes', '$.quota', '$.events_until'}
  if entry ~= '' then
    paths[#paths + 1] = entry_path(p.seq)
  end
  local read = redis.call('JSON.GET', session, unpack(paths))
  if not read then
    return closed(NO_SESSION)
  end
  read = cjson.decode(read)
  if stale_entry(read, p.seq, entry) then
    return closed(STALE, nil, read)
  end
  local seq = p.seq
  local forced = p.attempt == ''
  local replied = read['$.replied_seq'][1]
  replied = replied ~= nil and tonumber(replied) or nil
  if replied == nil and forced then
    replied = seq - 1
  end
  if seq <= replied then
    return closed(ALREADY_RECORDED, nil, read)
  end
  if forced and seq > replied + 1 then
    return reply(NOT_YOUR_TURN)
  end
  if not forced and read['$.generator'][1] ~= p.attempt then
    stream = nil  -- not acknowledged: the attempt that took it over does that
    return closed(FENCED, nil, read)
  end

  local id = append_events(events, 0, p.events_maxlen, p.channel, {unpack(ARGV, 3)})
  local changes = {}
  local function change(path, value)
    changes[#changes + 1], changes[#changes + 2], changes[#changes + 3] = session, path, value
  end
  -- The event stream's TTL, when due ("events_until" records when it was set to end).
  if renewal_due(read['$.events_until'][1], id_ms(id), p.ttl * 1000) then
    redis.call('PEXPIRE', events, p.ttl * 1000)
    change('$.events_until', id_ms(id) + p.ttl * 1000)
  end
  change('$.replied_seq', seq)
  if forced then
    change('$.generator', '""')
  end
  if message ~= '' then
    redis.call('JSON.ARRAPPEND', session, '$.messages', message)
    -- The session's byte count (session_size, library.lua): a document without one is
    -- measured whole by its next message.
    local size = read['$.size_bytes'][1]
    if type(size) == 'number' then
      change('$.size_bytes', size + #message)
    end
  end
  if p.units > 0 then
    change('$.quota', charged_quota(read, p.units, id_ms(id), p.period_ms))
  end
  redis.call('JSON.MSET', unpack(changes))
  return closed(FINISHED, id)
end

return run_batch(finish)
