"""The Redis limit store's Lua scripts: each runs atomically, on Redis's own clock.

Per policy: two buckets (hashes {level, ts}; a missing bucket is full) and, per budget window,
the spend, the outstanding reservations' total (both integers, nano-USD: sums stay exact), and
the reservations themselves -- a hash id -> nano-USD and a sorted set id by expiry. Every
script first drops expired reservations (at most ``PRUNE`` per call, so a script's cost stays
bounded), so a gateway that died mid-request holds budget only until its reservations expire.
Replies are strings: Redis truncates Lua numbers to integers.
"""

from __future__ import annotations

#: Expired reservations dropped per script call at most.
PRUNE = 100

# KEYS: request bucket, token bucket, spend, reserved, reservations hash, expiry zset.
_COMMON = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function level(key, cap)
  local v = redis.call('HMGET', key, 'level', 'ts')
  if not v[1] then return cap end
  return math.min(cap, tonumber(v[1]) + (now - tonumber(v[2])) * cap / 60)
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now, 'LIMIT', 0, PRUNE)
for _, id in ipairs(expired) do
  local held = redis.call('HGET', KEYS[5], id)
  if held then
    redis.call('DECRBY', KEYS[4], held)
    redis.call('HDEL', KEYS[5], id)
  end
  redis.call('ZREM', KEYS[6], id)
end
local spent = tonumber(redis.call('GET', KEYS[3]) or '0')
local reserved = tonumber(redis.call('GET', KEYS[4]) or '0')
""".replace("PRUNE", str(PRUNE))

# ARGV: rpm, tpm, budget (nano-USD, 0 = none), estimate nano-USD, estimate tokens,
# reservation id, reservation TTL (s), window keys' expiry (Unix s).
# Returns: refusal code ('' = admitted), requests left, tokens left, spent, reserved, retry s.
ADMIT = _COMMON + """
local rpm, tpm, budget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local est_nusd, est_tokens = tonumber(ARGV[4]), tonumber(ARGV[5])
local requests, tokens = -1, -1
if rpm > 0 then requests = level(KEYS[1], rpm) end
if tpm > 0 then tokens = level(KEYS[2], tpm) end
local function answer(code, retry)
  return {code, tostring(requests), tostring(tokens), tostring(spent), tostring(reserved),
          tostring(retry)}
end
if budget > 0 and (spent + reserved >= budget or spent + reserved + est_nusd > budget) then
  return answer('budget', 0)
end
if rpm > 0 and requests < 1 then return answer('requests', (1 - requests) * 60 / rpm) end
local needed = math.max(1, math.min(est_tokens, tpm))
if tpm > 0 and tokens < needed then return answer('tokens', (needed - tokens) * 60 / tpm) end
if rpm > 0 then
  requests = requests - 1
  redis.call('HSET', KEYS[1], 'level', tostring(requests), 'ts', tostring(now))
  redis.call('EXPIRE', KEYS[1], 120)
end
if tpm > 0 then
  tokens = math.max(-tpm, tokens - est_tokens)
  redis.call('HSET', KEYS[2], 'level', tostring(tokens), 'ts', tostring(now))
  redis.call('EXPIRE', KEYS[2], 120)
end
if budget > 0 then
  reserved = redis.call('INCRBY', KEYS[4], est_nusd)
  redis.call('HSET', KEYS[5], ARGV[6], est_nusd)
  redis.call('ZADD', KEYS[6], now + tonumber(ARGV[7]), ARGV[6])
  for i = 4, 6 do redis.call('EXPIREAT', KEYS[i], ARGV[8]) end
end
return answer('', 0)
"""

# KEYS: token bucket, spend, reserved, reservations hash, expiry zset (of the reservation's
# window). ARGV: reservation id ('' = none held), tpm, reserved tokens, used tokens, cost
# nano-USD, spend key's expiry (Unix s).
SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if ARGV[1] ~= '' then
  local held = redis.call('HGET', KEYS[4], ARGV[1])
  if held then
    redis.call('DECRBY', KEYS[3], held)
    redis.call('HDEL', KEYS[4], ARGV[1])
    redis.call('ZREM', KEYS[5], ARGV[1])
  end
end
local cost = tonumber(ARGV[5])
if cost > 0 then
  redis.call('INCRBY', KEYS[2], cost)
  redis.call('EXPIREAT', KEYS[2], ARGV[6])
end
local tpm, delta = tonumber(ARGV[2]), tonumber(ARGV[4]) - tonumber(ARGV[3])
if tpm > 0 and delta ~= 0 then
  local v = redis.call('HMGET', KEYS[1], 'level', 'ts')
  local level = tpm
  if v[1] then level = math.min(tpm, tonumber(v[1]) + (now - tonumber(v[2])) * tpm / 60) end
  level = math.max(-tpm, math.min(tpm, level - delta))
  redis.call('HSET', KEYS[1], 'level', tostring(level), 'ts', tostring(now))
  redis.call('EXPIRE', KEYS[1], 120)
end
return 1
"""

# KEYS: as ADMIT's. ARGV: rpm, tpm. Returns: requests left, tokens left, spent, reserved,
# number of reservations.
USAGE = _COMMON + """
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local requests, tokens = -1, -1
if rpm > 0 then requests = level(KEYS[1], rpm) end
if tpm > 0 then tokens = level(KEYS[2], tpm) end
return {tostring(requests), tostring(tokens), tostring(spent), tostring(reserved),
        tostring(redis.call('HLEN', KEYS[5]))}
"""
