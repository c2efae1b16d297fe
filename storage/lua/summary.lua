-- Store a session's new rolling summary, compare-and-set on the turns it covers.
-- A summary covers every turn up to user message "seq". A new one is accepted only if
-- it was made from the stored one ("base", the stored seq, 0 when there is none) and
-- extends it: so a job retried after a crash, or two workers folding the same turns at
-- once, store it once and never fold a turn twice or skip one (the loser changes
-- nothing). It may cover only answered turns, and never the session's last message,
-- the one turn that regenerate and edit (revise.lua) can still change.
-- KEYS[1] session document
-- ARGV[1] base: the seq of the summary it was made from (0: none), ARGV[2] the new
-- summary's seq, ARGV[3] the new summary, a JSON object {text, seq, tokens, timestamp}
-- Returns {STORED}, {STALE, the stored seq} (the stored summary is not the base: nothing
-- changed), {OUT_OF_RANGE, {seq, replied_seq}} (the new seq is not after the base, not
-- answered, or the last message: nothing changed), or {NO_SESSION}.
local STORED, STALE, OUT_OF_RANGE, NO_SESSION = 0, 1, 2, 3
local read = redis.call('JSON.GET', KEYS[1], '$.seq', '$.replied_seq', '$.summary')
if not read then
  return reply(NO_SESSION)
end
read = cjson.decode(read)
local stored = read['$.summary'][1]
local stored_seq = 0
if type(stored) == 'table' then
  stored_seq = tonumber(stored['seq']) or 0
end
local base, new = tonumber(ARGV[1]), tonumber(ARGV[2])
if stored_seq ~= base then
  return reply(STALE, stored_seq)
end
local seq, replied = tonumber(read['$.seq'][1]), tonumber(read['$.replied_seq'][1])
if new <= base or new > replied or new >= seq then
  return reply(OUT_OF_RANGE, {seq, replied})
end
redis.call('JSON.SET', KEYS[1], '$.summary', ARGV[3])
return reply(STORED)
