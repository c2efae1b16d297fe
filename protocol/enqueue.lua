-- Accept a user message: number it, append it to the history, queue it for a worker.
-- One atomic step, so a message is in history if and only if it is in the stream.
-- KEYS[1] session document, KEYS[2] message stream
-- ARGV[1] message JSON object without "seq", ARGV[2] session TTL (s),
-- ARGV[3] max messages waiting for a reply, ARGV[4] stream MAXLEN (~),
-- ARGV[5] token, ARGV[6] message id
-- Returns {seq, entry id}, or {-1} if the session does not exist, {-2} if too many wait.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {-1}
end
local seq = tonumber(redis.call('JSON.GET', KEYS[1], '.seq'))
local replied = tonumber(redis.call('JSON.GET', KEYS[1], '.replied_seq'))
if seq - replied >= tonumber(ARGV[3]) then
  return {-2}
end
seq = seq + 1
redis.call('JSON.SET', KEYS[1], '.seq', seq)
redis.call('JSON.ARRAPPEND', KEYS[1], '.messages', '{"seq":' .. seq .. ',' .. string.sub(ARGV[1], 2))
redis.call('EXPIRE', KEYS[1], ARGV[2])
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*',
  'token', ARGV[5], 'seq', seq, 'message_id', ARGV[6])
return {seq, id}
