-- Trimming a message stream without losing anything: shared by enqueue.lua and
-- trim_stream.lua (prepended to each by protocol/store.py).
-- No entry that the consumer groups have not acknowledged is ever removed: read and
-- pending ones, and ones not yet delivered, stay whatever the bound.
-- mode "acked" (Redis >= 8.2): XTRIM's ACKED strategy removes only acknowledged entries.
-- mode "minid" (older Redis): once the stream is over the bound, remove the entries
-- below the oldest one a group still needs (its oldest pending entry, else the entry
-- after the last one delivered to it).
-- Both trim approximately (whole stream nodes), as MAXLEN ~ does.

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

local function trim_stream(stream, maxlen, mode)
  if mode == 'acked' then
    return redis.call('XTRIM', stream, 'MAXLEN', '~', maxlen, 'ACKED')
  end
  if redis.call('XLEN', stream) <= tonumber(maxlen) then
    return 0
  end
  local floor = nil
  local groups = redis.call('XINFO', 'GROUPS', stream)
  if #groups == 0 then
    return 0
  end
  for _, flat in ipairs(groups) do
    local group = fields_of(flat)
    local needed = group['last-delivered-id']
    if tonumber(group['pending']) > 0 then
      local summary = redis.call('XPENDING', stream, group['name'])
      if id_less(summary[2], needed) then
        needed = summary[2]
      end
    end
    if floor == nil or id_less(needed, floor) then
      floor = needed
    end
  end
  -- MINID keeps ids >= floor: the last delivered entry stays too, harmlessly.
  return redis.call('XTRIM', stream, 'MINID', '~', floor)
end
