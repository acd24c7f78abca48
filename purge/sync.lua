-- Version-fenced sync writes (issue 12): each write replaces a key's value
-- with a row's new image, or deletes it, only if its version is newer than
-- the key's, so that a redelivered, reordered or replayed older write never
-- takes the value back in time.
--
-- The version lives next to the value, in a companion key (the purger
-- names it "flashsync:v:" .. the key): applications read the value as it
-- is, a plain string or hash. A delete removes the value and leaves its
-- version as a tombstone for ARGV[1] ms, so a late older write cannot
-- bring the row back; an application reads a tombstoned key as a miss.
-- Versions are fixed-width strings (invalidate.SyncVersion): their byte
-- order is their order.
--
-- KEYS[1]: the replica's sync epoch key (the newest epoch applied, which
-- readers' versioned fills take); KEYS[2i], KEYS[2i+1]: write i's key and
-- its version key.
-- ARGV[1] the tombstone TTL (ms); ARGV[2] the newest epoch of the writes
-- (10 digits); then per write: op ("set", "hash" or "del"), version, the
-- value's TTL (ms, 0: none), n, then n arguments: set: the value; hash:
-- field, value, ...; del: none.
--
-- The ops "rset" and "rhash" (refresh_hot) write only where the key
-- exists: a replica that does not hold it is hot for other keys, not this
-- one, and is left alone (nothing written, not even the version).
--
-- Returns per write 1 (applied), 0 (older than the key's: dropped) or 2
-- (rset, rhash: the key is not held: left alone).

local tomb = tonumber(ARGV[1])
local epoch = redis.call('GET', KEYS[1])
if not epoch or epoch < ARGV[2] then redis.call('SET', KEYS[1], ARGV[2]) end
local out = {}
local a = 3
for i = 2, #KEYS, 2 do
  local op, ver, ttl, n = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local first = a + 4
  a = first + n
  local cur = redis.call('GET', KEYS[i + 1])
  if op == 'rset' or op == 'rhash' then
    if redis.call('EXISTS', KEYS[i]) == 0 then op = 'cold' else op = string.sub(op, 2) end
  end
  if cur and cur >= ver then
    out[#out + 1] = 0
  elseif op == 'cold' then
    out[#out + 1] = 2
  else
    if op == 'del' then
      redis.call('DEL', KEYS[i])
      redis.call('SET', KEYS[i + 1], ver, 'PX', tomb)
    else
      if op == 'set' then
        if ttl > 0 then
          redis.call('SET', KEYS[i], ARGV[first], 'PX', ttl)
        else
          redis.call('SET', KEYS[i], ARGV[first])
        end
      else
        redis.call('DEL', KEYS[i])
        if n > 0 then redis.call('HSET', KEYS[i], unpack(ARGV, first, first + n - 1)) end
        if ttl > 0 then redis.call('PEXPIRE', KEYS[i], ttl) end
      end
      -- The version outlives the value by a tombstone's time: an older
      -- write arriving just after the value expired is still refused.
      if ttl > 0 then
        redis.call('SET', KEYS[i + 1], ver, 'PX', ttl + tomb)
      else
        redis.call('SET', KEYS[i + 1], ver)
      end
    end
    out[#out + 1] = 1
  end
end
return out
