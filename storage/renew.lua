-- Renew socket leases (storage/leases.py): each lease counts again until ARGV[1] ms from
-- now (Redis's clock), added back if it had lapsed; the set lives as long.
--
-- KEYS[1] the session's socket leases: a sorted set of lease ids scored by expiry (ms)
-- ARGV[1] lease (ms)
-- ARGV[2..] lease ids
-- Returns {RENEWED, leases renewed}.
local RENEWED = 0
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return reply(RENEWED, #ARGV - 1)
