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
-- KEYS[5] the applied sequence: how many messages were applied, counted
--         across restarts from snapshots (a snapshot brings back its own)
-- KEYS[6] a replay in progress: "<seq in the snapshot>:<floor>:<the
--         snapshot watermark's caught-up time>" (below)
-- KEYS[7..] keys to DEL first (mode apply)
--
-- ARGV[1] mode: apply (a message: DEL, flush, mark its coverage), state
--         (read only, unless the replica restarted or lost its watermark),
--         rejoin (flush and restart the watermark if ARGV[7]'s condition
--         still holds), replayed (a replay's end)
-- ARGV[2] the server's run_id, as INFO answered on the connection this
--         script runs on (the script reads INFO itself only where the
--         marker differs from it)
-- ARGV[3], ARGV[4] the largest To and CaughtUp of the covered messages the
--         purger has received for the replica
-- ARGV[5] "1": a restarted replica is replayed (rejoin = "replay"), not
--         flushed; ARGV[6] the floor: the largest sequence the purger logged
-- apply:  ARGV[7] from, ARGV[8] to, ARGV[9] caught-up, ARGV[10] parts (0:
--         no coverage), ARGV[11] part, ARGV[12] flush ("1") or not ("0")
-- rejoin: ARGV[7] reason: "gap" (ARGV[8]: the watermark the purger saw
--         stuck; another purger may have moved it since), "dead_letter"
--         (ARGV[8]: the dead message's To; the watermark may be past it) or
--         "restarted" (a replay that cannot be done; ARGV[8]: the replay)
-- replayed: ARGV[7] the replay done (as KEYS[6] holds it), ARGV[8] and
--         ARGV[9] the watermark (to, caught-up) the replica had reached
--         before it restarted
--
-- Replay: a replica restarted from a snapshot holds the snapshot's
-- sequence S. Every message applied since had a larger one, and the purger
-- logged each with its keys: re-purging the logged messages S+1 up to the
-- floor makes the snapshot as consistent as the replica was before it went
-- down. Until then (KEYS[6] set) messages apply as usual but the
-- watermark's caught-up time stays 0, so readers skip the replica.
--
-- Every offset and time is 20 decimal digits, zero-padded: Lua numbers are
-- doubles, exact only to 2^53, while strings of one width compare exactly.
--
-- Returns {status, reason, watermark found, watermark now, completed ranges
-- beyond it, the lowest From among them ("" for none), the server's run_id,
-- the sequence (this message's, in mode apply), the replay in progress}
-- with status ok, started (a replica without watermark: reason empty or
-- unmarked), unmarked (not started: no message yet), rejoined (flushed and
-- restarted: reason restarted, lost, gap, dead_letter or flush), replaying
-- (a replay is due or running), replayed (it is done) or skipped (a rejoin
-- or replay whose condition no longer held).

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
for i = 7, #KEYS, 64 do
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
if mode == 'apply' and ARGV[10] ~= '0' then
  seenTo, seenCU = later(seenTo, ARGV[8]), later(seenCU, ARGV[9])
end
local floor = tonumber(ARGV[6])
local seq = tonumber(redis.call('GET', KEYS[5]) or '0')

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
  -- The flush has a number of its own, above every one the purger knows:
  -- the purger logs it, so that no replay of a snapshot taken before it
  -- passes it (what it flushed may be what no log holds: a lost purge).
  seq = math.max(seq, floor) + 1
  redis.call('SET', KEYS[5], seq)
  to, cu = m, c
  status, reason = 'rejoined', why
end

-- replay starts a replay of the messages after the snapshot's sequence:
-- the replica is marked as the server's, and its sequence continues above
-- every one the purger logged.
local function replay()
  if redis.call('EXISTS', KEYS[6]) == 0 then
    redis.call('SET', KEYS[6], string.format('%d:%d:', seq, math.max(seq, floor)) .. cu)
  end
  redis.call('SET', KEYS[2], server())
  seq = math.max(seq, floor)
  redis.call('SET', KEYS[5], seq)
  status, reason = 'replaying', 'restarted'
end

if marker and marker ~= live and marker ~= server() then
  -- the data is a snapshot's (RDB, AOF) or a copy. A snapshot numbered
  -- above the purger's floor holds messages it never saw applied (another
  -- purger's): not replayable.
  if ARGV[5] == '1' and to and seq <= floor then replay() else rejoin('restarted') end
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
  if mode == 'apply' and ARGV[12] == '1' then redis.call('FLUSHDB', 'ASYNC') end
  if seenTo ~= Z and redis.call('DBSIZE') == 0 then
    to, cu, status, reason = seenTo, seenCU, 'started', 'empty'
  elseif mode == 'apply' and ARGV[10] ~= '0' then
    to, cu, status, reason = ARGV[7], Z, 'started', 'unmarked'
  else
    return {'unmarked', '', before, '', 0, '', server(), seq, ''}
  end
  redis.call('SET', KEYS[2], server())
  seq = math.max(seq, floor)
  redis.call('SET', KEYS[5], seq)
end

local replaying = redis.call('GET', KEYS[6])
if replaying and status == 'ok' then status, reason = 'replaying', 'restarted' end

if mode == 'apply' and ARGV[12] == '1' and (status == 'ok' or status == 'replaying') then
  rejoin('flush')
elseif mode == 'rejoin' and (status == 'ok' or status == 'replaying') then
  if (ARGV[7] == 'gap' and before ~= ARGV[8]) or (ARGV[7] == 'dead_letter' and to >= ARGV[8]) or
      (ARGV[7] == 'restarted' and replaying ~= ARGV[8]) then
    status = 'skipped'
  else
    rejoin(ARGV[7])
  end
elseif mode == 'replayed' and status == 'replaying' then
  if replaying ~= ARGV[7] then
    status = 'skipped'
  else
    -- Everything up to the watermark the replica had reached before it
    -- went down is applied again; the parts of ranges at or below it that
    -- the snapshot recorded are done with.
    redis.call('DEL', KEYS[6])
    local c0 = string.match(replaying, '^%d+:%d+:(%d+)$') or Z
    to, cu = later(to, ARGV[8]), later(c0, ARGV[9])
    for _, f in ipairs(redis.call('HKEYS', KEYS[4])) do
      local t = string.match(f, '^%d+:(%d+):')
      if t and t <= to then redis.call('HDEL', KEYS[4], f) end
    end
    status, reason = 'replayed', 'restarted'
  end
end
if status ~= 'replaying' then replaying = nil end
if status == 'rejoined' then replaying = nil end

if mode == 'apply' then
  seq = seq + 1
  redis.call('SET', KEYS[5], seq)
end

if mode == 'apply' and ARGV[10] ~= '0' then
  local from, rto, rcu, parts = ARGV[7], ARGV[8], ARGV[9], tonumber(ARGV[10])
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
    if redis.call('HSETNX', KEYS[4], base .. ':' .. ARGV[11], '1') == 1 then
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

-- A replica being replayed is not to be read: its caught-up time is 0.
if replaying then cu = Z end
local after = '1:' .. plain(to) .. ':' .. plain(cu)
if after ~= before or status == 'rejoined' or status == 'replayed' then redis.call('SET', KEYS[1], after) end
return {status, reason, before, after, pending, lowest, live, seq, replaying or ''}
