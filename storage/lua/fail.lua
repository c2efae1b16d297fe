-- Count a failed try at a message stream entry: an attempt that began and failed in a
-- live worker (an error, not a crash), or a failure before any attempt could begin (a
-- script error). The entry's delivery count (XPENDING's) goes up by one; it stays
-- pending, held by the consumer, for a takeover. The attempt, if any, is recorded as
-- failed ("<seq>:failed") so that the next one is not counted as following a crash.
-- KEYS[1] session document, KEYS[2] message stream
-- ARGV[1] attempt ("<seq>:<id>", "" if none began), ARGV[2] entry id, ARGV[3] group,
-- ARGV[4] consumer
-- Returns {COUNTED, the new delivery count}, or {NOT_PENDING} if the entry is not pending
-- (the attempt is marked failed all the same).
local COUNTED, NOT_PENDING = 0, 1
local count = 0
local p = redis.call('XPENDING', KEYS[2], ARGV[3], ARGV[2], ARGV[2], 1)
if p[1] then
  count = tonumber(p[1][4]) + 1
  redis.call('XCLAIM', KEYS[2], ARGV[3], ARGV[4], 0, ARGV[2], 'RETRYCOUNT', count, 'JUSTID')
end
if ARGV[1] ~= '' and redis.call('EXISTS', KEYS[1]) == 1 then
  if json_field(KEYS[1], 'generator') == ARGV[1] then
    local seq = string.match(ARGV[1], '^(%d+):')
    redis.call('JSON.SET', KEYS[1], '$.generator', cjson.encode(seq .. ':failed'))
  end
end
if count == 0 then
  return reply(NOT_PENDING)
end
return reply(COUNTED, count)
