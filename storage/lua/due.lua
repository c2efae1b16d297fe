-- Take the sessions of a waiting set not checked for a while, marking them checked now.
-- KEYS[1] waiting set; ARGV[1] age (ms), ARGV[2] most to take
-- Returns {TAKEN, their tokens}.
local TAKEN = 0
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms - tonumber(ARGV[1]),
  'LIMIT', 0, tonumber(ARGV[2]))
for _, token in ipairs(due) do
  redis.call('ZADD', KEYS[1], now_ms, token)
end
return reply(TAKEN, due)
