-- Give a session the title a worker made for it, unless it has one (given by a person
-- meanwhile, or by an earlier try).
-- KEYS[1] session document
-- ARGV[1] the title, as a JSON string
-- Returns {SET}, {KEPT} (it had a title: nothing changed) or {NO_SESSION}.
local SET, KEPT, NO_SESSION = 0, 1, 2
if redis.call('EXISTS', KEYS[1]) == 0 then
  return reply(NO_SESSION)
end
local title = json_field(KEYS[1], 'title')
if title ~= nil and title ~= '' then
  return reply(KEPT)
end
redis.call('JSON.SET', KEYS[1], '$.title', ARGV[1])
return reply(SET)
