-- Renew socket leases (storage/leases.py) of several sorted sets in one call: each lease
-- counts again until ARGV[1] ms from now (Redis's clock), added back if it had lapsed;
-- each set lives as long. The keys share one hash tag (one slot on a Redis Cluster).
--
-- KEYS[i] a sorted set of leases (ids scored by expiry, ms): a session's sockets, or a
--         client address's (admit.lua's "hold" mode)
-- ARGV[1] lease (ms)
-- ARGV[1 + i] how many lease ids of KEYS[i] follow; then all the ids, key after key
-- Returns {RENEWED, leases renewed}.
local RENEWED = 0
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
local next_id = #KEYS + 2
local renewed = 0
for i = 1, #KEYS do
  for _ = 1, tonumber(ARGV[1 + i]) do
    redis.call('ZADD', KEYS[i], now + lease, ARGV[next_id])
    next_id = next_id + 1
    renewed = renewed + 1
  end
  redis.call('PEXPIRE', KEYS[i], lease)
end
return reply(RENEWED, renewed)
