-- Trim one message stream to about its bound, keeping every unacknowledged entry
-- (trim.lua, prepended, holds trim_stream).
-- KEYS[1] message stream; ARGV[1] consumer group, ARGV[2] bound (acknowledged entries
-- kept), ARGV[3] mode ("acked" or "minid")
-- Returns {TRIMMED, the number of entries removed}.
local TRIMMED = 0
return reply(TRIMMED, trim_stream(KEYS[1], ARGV[1], ARGV[2], ARGV[3], nil))
