-- Offline history: runs a chunk of Retain, History and Ack requests in request order, then
-- publishes what the Retains sent, one message per node. Atomic, so per uid the offsets, the
-- stream and every node's channel see the same order. Called by history.rs.
--
-- KEYS: the node set, then per uid i (from 1): presence hash KEYS[3i-1], history record
--   KEYS[3i] (e epoch, o offset, a acked), stream KEYS[3i+1] (id = offset, t ms, p tail).
-- ARGV: own node id, channel prefix, size, ttl ms, record ttl ms, epoch for uids without one,
--   deadline (Redis ms), uid count n, the n uids wire-encoded, then the requests:
--   'r' tail k i1..ik | 'h' i since | 'a' i epoch offset
-- Returns one reply per request: {remote, {{epoch, offset}...}} | {epoch, offset, acked,
--   {{offset, tail}...}} | 0; or 'late', having done nothing, when it runs after its deadline:
--   the node has told its callers the requests failed (a Redis that hung and came back runs
--   what was queued to it), so running them now would send and keep pushes it disowned.

local own, prefix = ARGV[1], ARGV[2]
local size, ttl, record_ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local fresh, deadline, n = ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
if now > deadline then return 'late' end

-- LEB128, as wire.rs reads it.
local function varint(x)
  local out = ''
  while x >= 128 do
    out = out .. string.char(x % 128 + 128)
    x = math.floor(x / 128)
  end
  return out .. string.char(x)
end

-- The uid's epoch, made (with an empty stream: what it held belongs to a lost epoch) if it
-- has none; the record's ttl restarts once per call.
local epochs = {}
local function epoch(i)
  local e = epochs[i]
  if e then return e end
  e = redis.call('HGET', KEYS[3 * i], 'e')
  if not e then
    e = fresh
    redis.call('HSET', KEYS[3 * i], 'e', e, 'o', 0, 'a', 0)
    redis.call('DEL', KEYS[3 * i + 1])
  end
  redis.call('PEXPIRE', KEYS[3 * i], record_ttl)
  epochs[i] = e
  return e
end

local live
local function is_live(node)
  if not live then
    live = {}
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], string.format('(%d', now), '+inf')) do
      live[id] = true
    end
  end
  return live[node]
end

-- {node, connections} per node holding the uid; this node counts whatever the node set
-- says, dead nodes' fields are removed on the way.
local holders = {}
local function holders_of(i)
  local h = holders[i]
  if h then return h end
  h = {}
  local fields = redis.call('HGETALL', KEYS[3 * i - 1])
  for j = 1, #fields, 2 do
    local node, connections = fields[j], tonumber(fields[j + 1])
    if node == own or is_live(node) then
      if connections and connections > 0 then h[#h + 1] = {node, connections} end
    else
      redis.call('HDEL', KEYS[3 * i - 1], node)
    end
  end
  holders[i] = h
  return h
end

local messages, destinations = {}, {}
local function message(node)
  local m = messages[node]
  if not m then
    m = {'b'}
    messages[node] = m
    destinations[#destinations + 1] = node
  end
  return m
end

local replies, tally, appended = {}, {}, {}
local a = 9 + n
while a <= #ARGV do
  local op = ARGV[a]
  if op == 'r' then
    local tail, k = ARGV[a + 1], tonumber(ARGV[a + 2])
    local positions, groups, order = {}, {}, {}
    for j = 1, k do
      local i = tonumber(ARGV[a + 2 + j])
      local e = epoch(i)
      local offset = redis.call('HINCRBY', KEYS[3 * i], 'o', 1)
      redis.call('XADD', KEYS[3 * i + 1], 'MAXLEN', '~', size, offset, 't', now, 'p', tail)
      appended[i] = true
      positions[j] = {e, offset}
      local entry = ARGV[8 + i] .. varint(#e) .. e .. varint(offset)
      for _, holder in ipairs(holders_of(i)) do
        local g = groups[holder[1]]
        if not g then
          g = {uids = {}, connections = 0}
          groups[holder[1]] = g
          order[#order + 1] = holder[1]
        end
        g.uids[#g.uids + 1] = entry
        g.connections = g.connections + holder[2]
      end
    end
    for _, node in ipairs(order) do
      local g = groups[node]
      local m = message(node)
      m[#m + 1] = 'r' .. varint(#g.uids) .. table.concat(g.uids) .. tail
      if node ~= own then tally[#tally + 1] = {#replies + 1, node, g.connections} end
    end
    replies[#replies + 1] = {0, positions}
    a = a + 3 + k
  elseif op == 'h' then
    local i, since = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
    local e = epoch(i)
    local record = redis.call('HMGET', KEYS[3 * i], 'o', 'a')
    local top, acked = tonumber(record[1]), tonumber(record[2])
    local pushes = {}
    if since < top then
      local first = math.max(since, top - size) + 1
      local entries = redis.call('XRANGE', KEYS[3 * i + 1], string.format('%d', first), '+',
        'COUNT', size)
      for _, entry in ipairs(entries) do
        local fields = entry[2]
        if now - tonumber(fields[2]) < ttl then
          pushes[#pushes + 1] = {tonumber(string.match(entry[1], '^%d+')), fields[4]}
        end
      end
    end
    replies[#replies + 1] = {e, top, acked, pushes}
    a = a + 3
  elseif op == 'a' then
    local i = tonumber(ARGV[a + 1])
    local record = redis.call('HMGET', KEYS[3 * i], 'e', 'o', 'a')
    -- An empty epoch is the uid's current one.
    if record[1] and (ARGV[a + 2] == '' or record[1] == ARGV[a + 2]) then
      local offset = math.min(tonumber(ARGV[a + 3]), tonumber(record[2]))
      if offset > tonumber(record[3]) then redis.call('HSET', KEYS[3 * i], 'a', offset) end
    end
    replies[#replies + 1] = 0
    a = a + 4
  else
    return redis.error_reply('history script: unknown request ' .. tostring(op))
  end
end

for i in pairs(appended) do
  redis.call('PEXPIRE', KEYS[3 * i + 1], ttl)
end
local reached = {}
for _, node in ipairs(destinations) do
  reached[node] = redis.call('PUBLISH', prefix .. node, table.concat(messages[node])) > 0
end
for _, t in ipairs(tally) do
  if reached[t[2]] then replies[t[1]][1] = replies[t[1]][1] + t[3] end
end
return replies
