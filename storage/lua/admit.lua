-- Admission control on one key, for every limit Parley keeps (one script, one key, so
-- one hash slot on a Redis Cluster). Time is Redis's own (TIME), so every server
-- replica counts on the same clock.
--
-- KEYS[1] the limit's key: a sorted set whose members are admissions, scored by when
--         they stop counting (ms since the epoch).
-- ARGV[1] mode: "window" (a sliding window: an admission counts for ARGV[3] ms) or
--         "hold" (a lease: an admission counts until released or ARGV[3] ms without
--         renewal; admitting a member already held renews it and is never refused)
-- ARGV[2] the limit (admissions counting at once, at most)
-- ARGV[3] window or lease (ms)
-- ARGV[4] the admission's member (unique)
-- Returns {ADMITTED, admissions counting now}, or {REFUSED, ms until one stops
-- counting}; a refusal is not recorded.
local ADMITTED, REFUSED = 0, 1
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit, span = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = ARGV[1] == 'hold' and redis.call('ZSCORE', KEYS[1], ARGV[4])
local count = redis.call('ZCARD', KEYS[1])
if not held and count >= limit then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  local wait = span
  if first[2] then wait = tonumber(first[2]) - now end
  return reply(REFUSED, math.max(wait, 1))
end
redis.call('ZADD', KEYS[1], now + span, ARGV[4])
redis.call('PEXPIRE', KEYS[1], span)
if held then
  return reply(ADMITTED, count)
end
return reply(ADMITTED, count + 1)
