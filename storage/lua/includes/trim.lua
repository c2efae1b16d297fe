-- Trimming a message stream without losing anything: used by enqueue.lua and
-- trim_stream.lua (prepended to each, after library.lua, by storage/scripts.py).
-- No entry that the consumer group has not acknowledged is ever removed: read and
-- pending ones, and ones not yet delivered, stay whatever the bound.
-- mode "acked" (Redis >= 8.2): XTRIM's ACKED strategy removes only acknowledged
-- entries, the oldest first, keeping about `maxlen` of them. It is exact (the
-- approximate form removes nothing when nodes mix acknowledged and other entries) and
-- walks the unacknowledged ones, so it runs only once TRIM_SLACK acknowledged entries
-- beyond the bound have gathered.
-- mode "minid" (older Redis): once the stream is over the bound, remove the entries
-- below the oldest one the group still needs (its oldest pending entry, else the one
-- after the last delivered), approximately (whole stream nodes), as MAXLEN ~ does.

local TRIM_SLACK = 100

local function id_less(a, b)
  local ams, an = string.match(a, '^(%d+)-(%d+)$')
  local bms, bn = string.match(b, '^(%d+)-(%d+)$')
  ams, an, bms, bn = tonumber(ams), tonumber(an), tonumber(bms), tonumber(bn)
  return ams < bms or (ams == bms and an < bn)
end

local function fields_of(flat)
  local t = {}
  for i = 1, #flat, 2 do
    t[flat[i]] = flat[i + 1]
  end
  return t
end

-- The group's fields (XINFO GROUPS), or nil if the stream or the group does not exist.
local function group_info(stream, group)
  -- No EXISTS first: XINFO GROUPS of a missing stream is an error, read as "no group".
  local groups = redis.pcall('XINFO', 'GROUPS', stream)
  if groups['err'] then
    return nil
  end
  for _, flat in ipairs(groups) do
    local info = fields_of(flat)
    if info['name'] == group then
      return info
    end
  end
  return nil
end

-- Entries the group has not acknowledged: pending, or not yet delivered (counted up to
-- `cap` when XINFO cannot tell, after a deletion among them).
local function unacked(stream, info, cap)
  local lag = info['lag']
  if type(lag) ~= 'number' then
    lag = #redis.call('XRANGE', stream, '(' .. info['last-delivered-id'], '+', 'COUNT', cap)
  end
  return tonumber(info['pending']) + lag
end

-- The entries of `stream` that `group` has not acknowledged (up to `bound` + 1 counted),
-- creating the group (from the start, so that what is queued now is read) if it or the
-- stream is missing: what enqueue.lua and revise.lua bound before they queue.
local function backlog_of(stream, group, bound)
  local info = group_info(stream, group)
  if info == nil then
    redis.call('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
    info = group_info(stream, group)
  end
  return unacked(stream, info, bound + 1)
end

-- The model of a session whose JSON.GET read (decoded) holds '$.model': its own, or
-- `default` if it chose none.
local function model_of(read, default)
  local model = read['$.model'][1]
  if type(model) ~= 'string' or model == '' then
    return default
  end
  return model
end

-- The first read and checks of the scripts that queue a message (enqueue.lua,
-- revise.lua): session document `session` read at `paths` (decoded), its model checked
-- against p.model (p.default_model for a session without one), and its admission
-- (admission, library.lua). Returns the read and the rate window; or nil, the refusal
-- ('no_session', 'wrong_model', or admission's) and its payload (the session's model;
-- the ms until it would admit). Where `paths` hold '$.last_queued' ({call, then what
-- that call returned}, written by enqueue.lua and revise.lua), a call whose id (p.call,
-- or for enqueue.lua p.message_id) is that call's returns nil, 'repeated' and what it
-- returned, before any check: the same call sent again.
local function queueing_read(session, paths, p, client_quota)
  local read = redis.call('JSON.GET', session, unpack(paths))
  if not read then
    return nil, 'no_session'
  end
  read = cjson.decode(read)
  local last = read['$.last_queued'] and read['$.last_queued'][1]
  if type(last) == 'table' and last[1] == (p.call or p.message_id) then
    return nil, 'repeated', {unpack(last, 2)}
  end
  local model = model_of(read, p.default_model)
  if model ~= p.model then
    return nil, 'wrong_model', model
  end
  local refused, payload = admission(read, p, client_quota, lazy_clock())
  if refused then
    return nil, refused, payload
  end
  return read, payload
end

-- Trim `stream` (read by `group`) to about `maxlen` acknowledged entries; `backlog` is
-- its unacknowledged entries if known, else nil. Returns the entries removed.
local function trim_stream(stream, group, maxlen, mode, backlog)
  maxlen = tonumber(maxlen)
  local length = redis.call('XLEN', stream)
  if length <= maxlen then
    return 0
  end
  local info = group_info(stream, group)
  if info == nil then
    return 0  -- nobody reads it: every entry is still needed
  end
  if mode == 'acked' then
    backlog = backlog or unacked(stream, info, length)
    if length - backlog <= maxlen + TRIM_SLACK then
      return 0
    end
    return redis.call('XTRIM', stream, 'MAXLEN', '=', backlog + maxlen, 'ACKED')
  end
  local floor = info['last-delivered-id']
  if tonumber(info['pending']) > 0 then
    local oldest = redis.call('XPENDING', stream, group)[2]
    if id_less(oldest, floor) then
      floor = oldest
    end
  end
  -- MINID keeps ids >= floor: the last delivered entry stays too, harmlessly.
  return redis.call('XTRIM', stream, 'MINID', '~', floor)
end
