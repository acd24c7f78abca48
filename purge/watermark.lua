-- One replica's applied watermark, kept in the replica itself so that it
-- lives and dies with the data it describes, and so that every purger
-- process sharing the replica's NSQ channel advances the same one,
-- atomically (watermark.go explains the design).
--
-- KEYS[1] the watermark, "1:<to>:<caught-up unix ns>" (invalidate.Watermark)
-- KEYS[2] the marker: the run_id of the server the state was started on
-- KEYS[3] completed ranges beyond the watermark: a sorted set, all scores
--         0, members "<from>:<to>:<caught-up>" in lexical (= From) order
-- KEYS[4] ranges of several parts not all applied yet: a hash, fields
--         "<from>:<to>:<parts>" (parts applied) and "<...>:<part>" (applied)
-- KEYS[5..] keys to DEL first (mode apply)
--
-- ARGV[1] mode: apply (a message: DEL, flush, mark its coverage), state
--         (read only, unless the replica restarted or lost its watermark),
--         rejoin (flush and restart the watermark if ARGV[5]'s condition
--         still holds)
-- ARGV[2] the run_id the purger last saw for the replica (a hint: the
--         server's own is read with INFO when it differs from the marker)
-- ARGV[3], ARGV[4] the largest To and CaughtUp of the covered messages the
--         purger has received for the replica
-- apply:  ARGV[5] from, ARGV[6] to, ARGV[7] caught-up, ARGV[8] parts (0:
--         no coverage), ARGV[9] part, ARGV[10] flush ("1") or not ("0")
-- rejoin: ARGV[5] reason: "gap" (ARGV[6]: the watermark the purger saw
--         stuck; another purger may have moved it since) or "dead_letter"
--         (ARGV[6]: the dead message's To; the watermark may be past it)
--
-- Every offset and time is 20 decimal digits, zero-padded: Lua numbers are
-- doubles, exact only to 2^53, while strings of one width compare exactly.
--
-- Returns {status, reason, watermark found, watermark now, completed ranges
-- beyond it, the lowest From among them ("" for none), the server's run_id}
-- with status ok, started (a replica without watermark: reason empty or
-- unmarked), unmarked (not started: no message yet), rejoined (flushed and
-- restarted: reason restarted, lost, gap, dead_letter or flush) or skipped
-- (a rejoin whose condition no longer held).

local Z = '00000000000000000000'
local function pad(s) return string.sub(Z, 1, 20 - #s) .. s end
local function plain(s)
  local p = string.gsub(s, '^0+', '')
  if p == '' then return '0' end
  return p
end
local function later(a, b)
  if a > b then return a end
  return b
end

local mode = ARGV[1]
for i = 5, #KEYS, 64 do
  redis.call('DEL', unpack(KEYS, i, math.min(i + 63, #KEYS)))
end

local got = redis.call('MGET', KEYS[1], KEYS[2])
local before, marker = got[1] or '', got[2]
local to, cu
do
  local t, c = string.match(before, '^1:(%d+):(%d+)$')
  if t and #t <= 20 and #c <= 20 then to, cu = pad(t), pad(c) end
end
local live = ARGV[2]
local liveRead = false
local function server()
  if not liveRead then
    live = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') or ''
    liveRead = true
  end
  return live
end

local seenTo, seenCU = ARGV[3], ARGV[4]
if mode == 'apply' and ARGV[8] ~= '0' then
  seenTo, seenCU = later(seenTo, ARGV[6]), later(seenCU, ARGV[7])
end

local status, reason = 'ok', ''

-- rejoin flushes the database and restarts the watermark at the newest
-- range end recorded or seen: an empty replica is consistent with every
-- change published before now, and all of those are at or before it.
local function rejoin(why)
  local m, c = seenTo, seenCU
  if to then m, c = later(m, to), later(c, cu) end
  for _, s in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
    local _, t, x = string.match(s, '^(%d+):(%d+):(%d+)$')
    if t then m, c = later(m, t), later(c, x) end
  end
  for _, f in ipairs(redis.call('HKEYS', KEYS[4])) do
    local t = string.match(f, '^%d+:(%d+):%d+$')
    if t then m = later(m, t) end
  end
  redis.call('FLUSHDB', 'ASYNC')
  redis.call('SET', KEYS[2], server())
  to, cu = m, c
  status, reason = 'rejoined', why
end

if marker and marker ~= live and marker ~= server() then
  rejoin('restarted') -- the data is a snapshot's (RDB, AOF) or a copy
elseif marker and not to then
  rejoin('lost') -- the watermark was deleted or evicted
elseif to and not marker then
  rejoin('lost') -- the marker was deleted or evicted
elseif not marker then
  -- Never marked: a new or emptied replica, or data from before
  -- watermarks (trusted once, at the first message's From).
  if redis.call('EXISTS', KEYS[3], KEYS[4]) > 0 then
    redis.call('DEL', KEYS[3], KEYS[4]) -- leftovers of a partial eviction
  end
  if mode == 'apply' and ARGV[10] == '1' then redis.call('FLUSHDB', 'ASYNC') end
  if seenTo ~= Z and redis.call('DBSIZE') == 0 then
    to, cu, status, reason = seenTo, seenCU, 'started', 'empty'
  elseif mode == 'apply' and ARGV[8] ~= '0' then
    to, cu, status, reason = ARGV[5], Z, 'started', 'unmarked'
  else
    return {'unmarked', '', before, '', 0, '', server()}
  end
  redis.call('SET', KEYS[2], server())
end

if mode == 'apply' and ARGV[10] == '1' and status == 'ok' then
  rejoin('flush')
elseif mode == 'rejoin' and status == 'ok' then
  if (ARGV[5] == 'gap' and before ~= ARGV[6]) or (ARGV[5] == 'dead_letter' and to >= ARGV[6]) then
    status = 'skipped'
  else
    rejoin(ARGV[5])
  end
end

if mode == 'apply' and ARGV[8] ~= '0' then
  local from, rto, rcu, parts = ARGV[5], ARGV[6], ARGV[7], tonumber(ARGV[8])
  local base = from .. ':' .. rto .. ':' .. parts
  local complete = true
  if rto <= to then
    -- Old: everything it covers is covered. Its CaughtUp still holds for
    -- the watermark (every commit before it is at or before rto <= to).
    complete = false
    cu = later(cu, rcu)
    if parts > 1 and redis.call('HEXISTS', KEYS[4], base) == 1 then
      for i = 1, parts do redis.call('HDEL', KEYS[4], base .. ':' .. i) end
      redis.call('HDEL', KEYS[4], base)
    end
  elseif parts > 1 then
    local n
    if redis.call('HSETNX', KEYS[4], base .. ':' .. ARGV[9], '1') == 1 then
      n = redis.call('HINCRBY', KEYS[4], base, 1)
    else
      n = tonumber(redis.call('HGET', KEYS[4], base) or '0')
    end
    if n < parts then
      complete = false
    else
      for i = 1, parts do redis.call('HDEL', KEYS[4], base .. ':' .. i) end
      redis.call('HDEL', KEYS[4], base)
    end
  end
  if complete then
    if from <= to then
      to, cu = rto, later(cu, rcu)
    else
      redis.call('ZADD', KEYS[3], 0, from .. ':' .. rto .. ':' .. rcu)
    end
  end
end

-- Completed ranges that now start at or before the watermark extend it.
local pending, lowest = redis.call('ZCARD', KEYS[3]), ''
while pending > 0 do
  local first = redis.call('ZRANGE', KEYS[3], 0, 0)[1]
  local f, t, c = string.match(first, '^(%d+):(%d+):(%d+)$')
  if f and f > to then
    lowest = f
    break
  end
  redis.call('ZREM', KEYS[3], first)
  pending = pending - 1
  if f then to, cu = later(to, t), later(cu, c) end
end

local after = '1:' .. plain(to) .. ':' .. plain(cu)
if after ~= before or status == 'rejoined' then redis.call('SET', KEYS[1], after) end
return {status, reason, before, after, pending, lowest, live}
