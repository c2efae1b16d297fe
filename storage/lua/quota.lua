-- A quota on one key: a counter of units (model tokens) that renews a fixed time after
-- its first use. One key, so one hash slot on a Redis Cluster.
-- KEYS[1] the counter
-- ARGV[1] mode: "check" (is any of the quota left?) or "charge" (count ARGV[4] units)
-- ARGV[2] the quota (units per period)
-- ARGV[3] the period (ms), counted from the first charge
-- ARGV[4] units to charge
-- Returns {LEFT, units used} when some is left (or after a charge), {USED_UP, ms until
-- it renews} when it is used up.
local LEFT, USED_UP = 0, 1
if ARGV[1] == 'charge' then
  local used = redis.call('INCRBY', KEYS[1], ARGV[4])
  if redis.call('PTTL', KEYS[1]) < 0 then
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
  end
  return reply(LEFT, used)
end
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used >= tonumber(ARGV[2]) then
  return reply(USED_UP, math.max(redis.call('PTTL', KEYS[1]), 1))
end
return reply(LEFT, used)
