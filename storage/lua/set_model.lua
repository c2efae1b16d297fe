-- Change a session's model, only while none of its messages waits for a reply: every
-- waiting message of a session is then in its model's streams, where a sweep or a
-- takeover finds it.
-- KEYS[1] session document; ARGV[1] the model's id
-- Returns {SET}, {BUSY} (messages wait: nothing changed) or {NO_SESSION}.
local SET, BUSY, NO_SESSION = 0, 1, 2
local read = redis.call('JSON.GET', KEYS[1], '$.seq', '$.replied_seq')
if not read then
  return reply(NO_SESSION)
end
read = cjson.decode(read)
if tonumber(read['$.seq'][1]) > tonumber(read['$.replied_seq'][1]) then
  return reply(BUSY)
end
redis.call('JSON.SET', KEYS[1], '$.model', cjson.encode(ARGV[1]))
return reply(SET)
