"""The Lua scripts of the Redis backend (``state/redis_store.py``).

Redis runs each script alone, so each is one atomic step; the comment above each gives its
KEYS and ARGV. Scripts never fail half-way by design: everything that can refuse a call
(an id already logged, a history that changed) is checked before the first write, and
Redis checks maxmemory and read-only replicas at that first write. Key names follow the
layout in the backend's docstring; ``esc`` escapes names the way ``redis_state._escape``
does (``%`` and ``:``). Rows of a window come back as one string (``packed``) when they
are small; big ones (input rows) as a list, since Lua is slow to join megabytes.
"""

from __future__ import annotations

_HELPERS = """
local function esc(s) return (string.gsub(string.gsub(s, '%%', '%%25'), ':', '%%3A')) end
local function packed(items)  -- {count, width (-1: widths differ), the items concatenated}
  local width = items[1] and #items[1] or 0
  for _, item in ipairs(items) do
    if #item ~= width then return {#items, -1, ''} end
  end
  return {#items, width, table.concat(items)}
end
local function push(key, items)
  for i = 1, #items, 1000 do
    redis.call('RPUSH', key, unpack(items, i, math.min(i + 999, #items)))
  end
end
"""
# KEYS: seq, log, rings, one key per row, then per group: ids, counts, ring.
# ARGV: n, groups, keep, token; per row: id, group, w, q, flags, x;
# per group: model, version, k, then k ring entries.
RECORD = (
    _HELPERS
    + """
local n, groups, keep, token = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
if redis.call('HGET', KEYS[4], 'r') == token then return {0} end  -- a retry: already applied
local taken = {1}
for i = 1, n do
  if redis.call('EXISTS', KEYS[3 + i]) == 1 then taken[#taken + 1] = ARGV[5 + (i - 1) * 6] end
end
if #taken > 1 then return taken end
local model, version, ring, a = {}, {}, {}, 4 + n * 6
for g = 1, groups do
  local k = tonumber(ARGV[a + 3])
  model[g], version[g], ring[g] = ARGV[a + 1], ARGV[a + 2], {}
  for j = 1, k do ring[g][j] = ARGV[a + 3 + j] end
  a = a + 3 + k
end
local top = redis.call('INCRBY', KEYS[1], n)
local ids, per = {}, {}
for g = 1, groups do per[g] = {} end
for i = 1, n do
  local a = 4 + (i - 1) * 6
  local id, g, flags = ARGV[a + 1], tonumber(ARGV[a + 2]), ARGV[a + 5]
  local seq = string.format('%016d', top - n + i)
  local fields = {'m', model[g], 'v', version[g], 's', seq, 'w', ARGV[a + 3], 'q', ARGV[a + 4]}
  if string.find(flags, 'x', 1, true) then
    table.insert(fields, 'x'); table.insert(fields, ARGV[a + 6])
  end
  if i == 1 then table.insert(fields, 'r'); table.insert(fields, token) end
  redis.call('HSET', KEYS[3 + i], unpack(fields))
  ids[i] = id
  table.insert(per[g], id)
end
push(KEYS[2], ids)
for g = 1, groups do
  local k = 3 + n + (g - 1) * 3
  push(KEYS[k + 1], per[g])
  redis.call('HINCRBY', KEYS[k + 2], 'p', #per[g])
  if #ring[g] > 0 then
    push(KEYS[k + 3], ring[g])
    redis.call('LTRIM', KEYS[k + 3], -keep, -1)
    redis.call('SADD', KEYS[3], KEYS[k + 3])
  end
end
return {0}
"""
)
# KEYS: one key per distinct id. ARGV: prefix, t, token, t packed; per row: label, packed.
FEEDBACK = (
    _HELPERS
    + """
local prefix, t, token, t_packed = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local out = {}
for i, key in ipairs(KEYS) do
  local h = redis.call('HMGET', key, 'm', 'v', 's', 'w', 'y', 'ft')
  if not h[1] then
    out[i] = {'u'}
  elseif h[5] and h[6] ~= token then  -- labelled before (by this call: a retry)
    out[i] = {'d'}
  else
    local head = string.sub(h[4], 1, 16)  -- t and label
    if not h[5] then
      local member = h[3] .. head .. ARGV[4 + 2 * i] .. t_packed
      redis.call('HSET', key, 'y', ARGV[3 + 2 * i], 'f', t, 'lm', member, 'ft', token)
      local base = prefix .. 'v:' .. esc(h[1]) .. ':' .. esc(h[2]) .. ':'
      redis.call('ZADD', base .. 'l', t, member)
      redis.call('ZADD', base .. 'li', t, string.sub(key, #prefix + 3))  -- the labelled ids
      redis.call('HINCRBY', base .. 'c', 'l', 1)
    end
    out[i] = {'a', h[1], h[2], head}
  end
end
return out
"""
)
# KEYS: the version's id list. ARGV: n (> 0), prefix. The last n rows' w .. q, packed.
WINDOW = (
    _HELPERS
    + """
local out = {}
for _, id in ipairs(redis.call('LRANGE', KEYS[1], -tonumber(ARGV[1]), -1)) do
  local h = redis.call('HMGET', ARGV[2] .. 'p:' .. id, 'w', 'q')
  if h[1] then out[#out + 1] = h[1] .. h[2] end
end
return packed(out)
"""
)
# KEYS: a version's labelled set. ARGV: n (> 0). The last n members, packed.
LAST_ZSET = _HELPERS + "return packed(redis.call('ZRANGE', KEYS[1], -tonumber(ARGV[1]), -1))"
# KEYS: log. ARGV: cutoff, max_rows, chunk, prefix. Returns the log rows removed.
PRUNE = (
    _HELPERS
    + """
local cutoff, chunk, prefix = tonumber(ARGV[1]), tonumber(ARGV[3]), ARGV[4]
local excess = redis.call('LLEN', KEYS[1]) - tonumber(ARGV[2])
local removed = 0
while removed < chunk do
  local id = redis.call('LINDEX', KEYS[1], 0)
  if not id then break end
  local key = prefix .. 'p:' .. id
  local h = redis.call('HMGET', key, 'm', 'v', 'w', 'lm')
  if removed >= excess and h[3] and struct.unpack('<d', h[3]) >= cutoff then break end
  redis.call('LPOP', KEYS[1])
  if h[1] then
    local base = prefix .. 'v:' .. esc(h[1]) .. ':' .. esc(h[2]) .. ':'
    if redis.call('LINDEX', base .. 'p', 0) == id then
      redis.call('LPOP', base .. 'p')
    else
      redis.call('LREM', base .. 'p', 1, id)
    end
    if h[4] then
      redis.call('ZREM', base .. 'l', h[4])
      redis.call('ZREM', base .. 'li', id)
    end
    redis.call('DEL', key)
  end
  removed = removed + 1
end
return removed
"""
)
# KEYS: rings. ARGV: cutoff. Drops each ring's leading entries stamped before cutoff.
PRUNE_RINGS = """
local cutoff = tonumber(ARGV[1])
for _, ring in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  while true do
    local head = redis.call('LINDEX', ring, 0)
    if not head then redis.call('SREM', KEYS[1], ring) break end
    if struct.unpack('<d', head) >= cutoff then break end
    redis.call('LPOP', ring)
  end
end
return 0
"""
# KEYS: live, hist. ARGV: version, reason, t, expected history length ('' for any), token,
# actor, detail, expected live version ('' for any), '1' to switch only if no pointer is set.
# Returns 1 (switched), 0 (already live) or -1 (the history changed: re-read, retry).
SWITCH = """
local last = redis.call('LINDEX', KEYS[2], -1)
if last and cjson.decode(last).k == ARGV[5] then return 1 end  -- a retry: already applied
if ARGV[4] ~= '' and redis.call('LLEN', KEYS[2]) ~= tonumber(ARGV[4]) then return -1 end
if ARGV[8] and ARGV[8] ~= '' and redis.call('HGET', KEYS[1], 'version') ~= ARGV[8] then
  return -1  -- the live version is no longer the one this switch was decided on
end
local previous = redis.call('HGET', KEYS[1], 'version')
if ARGV[9] == '1' and previous then return -1 end  -- restore only a pointer that is gone
if previous == ARGV[1] then return 0 end
local entry = {t = ARGV[3], version = ARGV[1], previous = previous or cjson.null,
  reason = ARGV[2], k = ARGV[5]}
if ARGV[6] and ARGV[6] ~= '' then entry.actor = ARGV[6] end
if ARGV[7] and ARGV[7] ~= '' then entry.detail = ARGV[7] end  -- JSON text, kept as is
redis.call('RPUSH', KEYS[2], cjson.encode(entry))
redis.call('HSET', KEYS[1], 'version', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'serial', 1)
return 1
"""

# KEYS: the lease. ARGV: holder, ttl in ms. 1 when the holder has it (taken or renewed).
LEASE = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
return 1
"""
