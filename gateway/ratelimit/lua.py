"""The limiter's Redis scripts (Lua, run atomically by Redis) and the names of the keys they touch.

One bucket (a limit's seed and a key's host-independent GLOBAL hash, see gateway/_fast/bucket_py.py) is
one hash in Redis, or one hash per window for the window algorithms:

    PREFIX{SEED.GLOBAL}            GCRA: t (the global TAT, microseconds of Redis TIME), n (units admitted
                                   by every host), and one field per host id (units that host admitted)
    PREFIX{SEED.GLOBAL}:WINDOW     windows: n and one field per host id, for window number WINDOW
                                   (epoch time // period: the same number on every host)
    PREFIX{hosts}                  sorted set of live host ids scored by their last heartbeat (ms)

The braces are a Redis Cluster hash tag: the keys of one bucket live in one slot, and the sync batch puts
only the buckets of one slot into one script call (gateway/ratelimit/sync.py), so no call crosses slots
and a cluster pipeline sends each call to the node that owns it. Times in
Redis are Redis's own clock (``TIME``) or epoch window numbers; no host's monotonic clock is stored.
Every key expires (PEXPIRE on each write): a bucket nobody touches disappears once it is full again.

Numbers: Lua numbers are doubles; microseconds since the epoch (about 1.8e15) are exact below 2^53.
"""

from __future__ import annotations

MASK64 = 0xFFFF_FFFF_FFFF_FFFF

# The sync batch's script: one call carries every bucket of one Redis Cluster slot (on a single server or
# Sentinel, every bucket of the batch: one command, one reply, whatever the number of keys). KEYS[i] is
# the i-th entry's key. ARGV: the host's id; the number of kinds K; K times four values describing a kind
# of entry (what, interval_us, tolerance_us, ttl_ms: one per configured limit, and the heartbeat); then
# three values per entry (its kind's number from 1, units, floor_us), so a key costs three arguments. What:
#   'g' GCRA      KEYS[i] the bucket. Raises the TAT to now + floor_us (what the host knows was used
#                 besides these units: a no-op unless Redis lost the bucket), adds the ``units`` the host
#                 admitted since its last push (the TAT moves ``units`` intervals, capped at a full
#                 bucket plus the debt a fleet may owe: ``tolerance_us`` is that room); answers the
#                 units admitted by the other hosts in total and the global occupancy in us (TAT - now:
#                 what the bucket holds against new requests).
#   'w' window    KEYS[i] the window's hash. Adds the units; answers the other hosts' units in that window.
#   'h' heartbeat KEYS[i] the hosts' sorted set. Records the host; answers the live hosts (seen within ttl).
# The reply is flat: two numbers per entry (the second is 0 for windows and heartbeats).
PUSH = """
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local host = ARGV[1]
local kinds = tonumber(ARGV[2])
local entries = 2 + 4 * kinds
local out = {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local base = 2 + 4 * (tonumber(ARGV[entries + 3 * i - 2]) - 1)
  local kind = ARGV[base + 1]
  local units = tonumber(ARGV[entries + 3 * i - 1])
  local floor = tonumber(ARGV[entries + 3 * i])
  if kind == 'h' then
    local now_ms = math.floor(now_us / 1000)
    local ttl = tonumber(ARGV[base + 4])
    redis.call('ZADD', key, now_ms, host)
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms - ttl)
    redis.call('PEXPIRE', key, ttl)
    out[#out + 1] = redis.call('ZCARD', key)
    out[#out + 1] = 0
  elseif kind == 'w' then
    if units ~= 0 then
      redis.call('HINCRBY', key, 'n', units)
      redis.call('HINCRBY', key, host, units)
      redis.call('PEXPIRE', key, ARGV[base + 4])
    end
    local v = redis.call('HMGET', key, 'n', host)
    out[#out + 1] = tonumber(v[1] or '0') - tonumber(v[2] or '0')
    out[#out + 1] = 0
  else
    local tat = tonumber(redis.call('HGET', key, 't') or '0')
    if tat < now_us then tat = now_us end
    local raised = tat < now_us + floor
    if raised then tat = now_us + floor end
    if units ~= 0 or raised then
      tat = math.floor(math.min(tat + units * tonumber(ARGV[base + 2]), now_us + tonumber(ARGV[base + 3])))
      if tat < now_us then tat = now_us end
      redis.call('HSET', key, 't', string.format('%d', tat))
      redis.call('HINCRBY', key, 'n', units)
      redis.call('HINCRBY', key, host, units)
      redis.call('PEXPIRE', key, ARGV[base + 4])
    end
    local v = redis.call('HMGET', key, 'n', host)
    out[#out + 1] = tonumber(v[1] or '0') - tonumber(v[2] or '0')
    out[#out + 1] = tat - now_us
  end
end
return out
"""

# Synchronous mode, one call per request. KEYS[1] the bucket; ARGV: host, interval_us, tolerance_us,
# ttl_ms, units (1 takes, -1 gives back). Returns {1, TAT - now} when admitted, {0, TAT - now, wait}.
TAKE_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local units = tonumber(ARGV[5])
local tat = tonumber(redis.call('HGET', KEYS[1], 't') or '0')
if tat < now then tat = now end
local after = tat + units * tonumber(ARGV[2])
local tolerance = tonumber(ARGV[3])
if units > 0 and after - now > tolerance then
  return {0, tat - now, after - now - tolerance}
end
if after < now then after = now end
redis.call('HSET', KEYS[1], 't', string.format('%d', after))
redis.call('HINCRBY', KEYS[1], 'n', units)
redis.call('HINCRBY', KEYS[1], ARGV[1], units)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {1, after - now, 0}
"""

# Synchronous mode. KEYS[1] this window's hash, KEYS[2] the previous window's; ARGV: host, limit, weight
# of the previous window (0 for a fixed window), ttl_ms, units. Returns {admitted, current count (after),
# previous count}.
TAKE_WINDOW = """
local units = tonumber(ARGV[5])
local current = tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
local weight = tonumber(ARGV[3])
local previous = 0
if weight > 0 then previous = tonumber(redis.call('HGET', KEYS[2], 'n') or '0') end
if units > 0 and previous * weight + current + units > tonumber(ARGV[2]) then
  return {0, current, previous}
end
redis.call('HINCRBY', KEYS[1], 'n', units)
redis.call('HINCRBY', KEYS[1], ARGV[1], units)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {1, current + units, previous}
"""

def bucket_key(prefix: str, seed: int, global_key: int) -> str:
    """The Redis key of one bucket (GCRA), and the stem of its window keys."""
    return f"{prefix}{{{seed & MASK64:016x}.{global_key & MASK64:016x}}}"


def window_key(prefix: str, seed: int, global_key: int, window: int) -> str:
    return f"{bucket_key(prefix, seed, global_key)}:{window}"


def hosts_key(prefix: str) -> str:
    return f"{prefix}{{hosts}}"
