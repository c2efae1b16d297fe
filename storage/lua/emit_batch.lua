-- Publish the reply events of several sessions in one call, in order.
-- Only the attempt that the session records as generating (begin.lua) may emit; each
-- event goes to the session's event stream (for resume), then to its channel. On a
-- Redis Cluster a call holds sessions of one partition, which share its hash tag, so
-- it touches one slot. A worker sends one call for the events its replies have ready
-- at once (one a partition on a cluster), instead of one call an event.
-- KEYS[2i-1] session document i, KEYS[2i] its event stream
-- ARGV[1] event stream MAXLEN (~), ARGV[2] the session's TTL (ms); then four a session:
-- ARGV[4i-1] event JSON object without "event_id", ARGV[4i] channel, ARGV[4i+1] attempt
-- ("<seq>:<id>"), ARGV[4i+2] "1" to give the event stream the session's TTL (an
-- attempt's first event), else "0"
-- Returns {BATCHED, {{status, event id or false}, ...}}, one pair a session, in order;
-- each status is EMITTED, NO_SESSION or FENCED (EmitStatus in storage/scripts.py).
local BATCHED = 0
local EMITTED, NO_SESSION, FENCED = 0, 1, 2
local out = {}
for i = 1, #KEYS / 2 do
  local doc, stream, a = KEYS[2 * i - 1], KEYS[2 * i], 4 * i - 1
  local generator = redis.call('JSON.GET', doc, '$.generator')
  if not generator then
    out[i] = {NO_SESSION, false}
  elseif cjson.decode(generator)[1] ~= ARGV[a + 2] then
    out[i] = {FENCED, false}
  else
    local ttl = ARGV[a + 3] == '1' and tonumber(ARGV[2]) or 0
    out[i] = {EMITTED, append_event(stream, ttl, ARGV[1], ARGV[a + 1], ARGV[a])}
  end
end
return reply(BATCHED, out)
