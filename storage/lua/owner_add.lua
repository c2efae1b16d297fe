-- Add a session to its owner's conversations, within the owner's limit.
-- KEYS[1] the owner's record (a hash), KEYS[2] the owner's conversations (a sorted set
-- of session tokens scored by their creation time, ms); one hash slot, the owner's.
-- ARGV[1] session token, ARGV[2] its creation time (ms), ARGV[3] conversations allowed,
-- ARGV[4] the owner's TTL (s), renewed with both keys.
-- Returns {ADDED, the owner's conversations now}, {FULL, the owner's conversations}
-- (nothing added) or {NO_OWNER}.
local ADDED, FULL, NO_OWNER = 0, 1, 2
if redis.call('EXISTS', KEYS[1]) == 0 then
  return reply(NO_OWNER)
end
local count = redis.call('ZCARD', KEYS[2])
if count >= tonumber(ARGV[3]) then
  return reply(FULL, count)
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return reply(ADDED, count + 1)
