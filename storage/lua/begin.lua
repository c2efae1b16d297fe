-- Start one attempt at generating the reply of a user message, if it is its turn,
-- fencing off older attempts; return the session, which the prompt is built from.
-- One round trip: the turn check, the fence, and what the prompt needs (the session's
-- fields, then its newest messages).
-- The session records the attempt now generating ("<seq>:<attempt id>"); emit and finish
-- accept only that attempt's events, so a worker that was taken over while still alive
-- (a long pause) can no longer interleave its tokens with the new attempt's.
-- If an earlier attempt of this very message had started, its partial text may have
-- reached clients: a restart event tells them to discard it. That earlier attempt
-- either failed in a live worker, which then recorded "<seq>:failed" (fail.lua, and
-- counted it in the entry's delivery count), or its worker died or lost Redis
-- mid-reply: such crashes are counted in "crashes" ("<seq>:<n>"). An entry taken over
-- while it waited its turn had no attempt, and nothing is counted.
-- Batched (batch.lua): a call of one message's attempt; its KEYS: the session document,
-- the session's event stream; its ARGV[1] a JSON object: seq, attempt ("<seq>:<id>"), restart (the restart event, a
-- JSON object without "event_id"), channel, events_maxlen (~), ttl (the session's, s:
-- the event stream's if a restart is emitted), window (messages to return, the newest;
-- 0: all), entry (the stream entry id of this attempt's message; "": not checked):
-- fencing by entry, see stale_entry (library.lua)
-- Each call returns {STARTED or RESTARTED, {crashes, fields, messages}}: STARTED for a first
-- attempt (or this attempt's call sent again: nothing more is done), RESTARTED if a
-- restart was emitted; crashes the attempts at this message
-- whose worker died; fields the JSON text of the session's read, an object of JSONPath
-- matches: "$.stop_seq", "$.model", "$.system_prompt", "$.summary" (an empty array when
-- the session lacks the field), and more; messages the JSON array of all its messages,
-- or of the newest window + 1 (the history is complete if there are no more than
-- window). Or {ANSWERED} (already answered), {NOT_YET} (an
-- earlier message is still unanswered: not its turn; nothing changed), {NO_SESSION},
-- {STALE} (the entry is not the one the message is queued under now: nothing changed;
-- ack it).
local STARTED, RESTARTED, ANSWERED, NOT_YET, NO_SESSION, STALE = 0, 1, 2, 3, 4, 5
-- One call (run_batch, batch.lua: its keys and arguments as KEYS and ARGV).
local function begin(KEYS, ARGV)
  local session, events = KEYS[1], KEYS[2]
  local p = cjson.decode(ARGV[1])
  local seq = p.seq
  local paths = {
    '$.replied_seq', '$.generator', '$.crashes', '$.stop_seq', '$.model', '$.system_prompt',
    '$.summary'
  }
  if p.entry ~= '' then
    paths[#paths + 1] = entry_path(seq)
  end
  local text = redis.call('JSON.GET', session, unpack(paths))
  if not text then
    return reply(NO_SESSION)
  end
  local read = cjson.decode(text)
  if stale_entry(read, seq, p.entry) then
    return reply(STALE)
  end
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
  local status, crashes = STARTED, 0
  if tonumber(string.match(previous, '^(%d+):')) == seq then
    status = RESTARTED
    local record = read['$.crashes'][1]
    local crashed_seq, n = string.match(type(record) == 'string' and record or '', '^(%d+):(%d+)$')
    if tonumber(crashed_seq) == seq then
      crashes = tonumber(n)
    end
  end
  local window = p.window > 0 and ('$.messages[-' .. (p.window + 1) .. ':]') or '$.messages[*]'
  if previous == p.attempt then
    -- This very call ran already (redis-py sent it again after a lost answer): begun,
    -- with nothing counted or emitted again.
    return reply(STARTED, {crashes, text, redis.call('JSON.GET', session, window)})
  end
  if status == RESTARTED and string.sub(previous, -7) ~= ':failed' then
    crashes = crashes + 1
    redis.call(
      'JSON.MSET', session, '$.generator', cjson.encode(p.attempt),
      session, '$.crashes', cjson.encode(seq .. ':' .. crashes)
    )
  else
    redis.call('JSON.SET', session, '$.generator', cjson.encode(p.attempt))
  end
  if status == RESTARTED then
    append_event(events, p.ttl * 1000, p.events_maxlen, p.channel, p.restart)
  end
  -- The messages are read apart and passed on as they are: decoding them here would cost
  -- Redis several times the read itself (81 messages: 630 against 190 us a call).
  return reply(status, {crashes, text, redis.call('JSON.GET', session, window)})
end

return run_batch(begin)
