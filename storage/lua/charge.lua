-- Charge model tokens to a session's quota ("quota" in its document: charged_quota,
-- library.lua), for a model request outside a reply (a title, a summary); a reply is
-- charged by finish.lua. Its client's quota lives in another slot: charged apart, with
-- the client this returns.
-- KEYS[1] the session document
-- ARGV[1] model tokens to charge, ARGV[2] a quota's period (ms)
-- Returns {CHARGED, the session's client digest ("": unknown)}, or {NO_SESSION}.
local CHARGED, NO_SESSION = 0, 1
local read = redis.call('JSON.GET', KEYS[1], '$.quota', '$.client')
if not read then
  return reply(NO_SESSION)
end
read = cjson.decode(read)
local quota = charged_quota(read, tonumber(ARGV[1]), lazy_clock()(), tonumber(ARGV[2]))
redis.call('JSON.SET', KEYS[1], '$.quota', quota)
local client = read['$.client'][1]
return reply(CHARGED, type(client) == 'string' and client or '')
