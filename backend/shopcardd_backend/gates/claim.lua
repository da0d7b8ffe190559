-- The claim step of the Redis gate (gates/redis.py): decide one claim and record it, atomically.
-- Every key of the deal is under its hash tag {deal_id}: the script is single-slot and runs
-- unchanged on Redis Cluster (where it is given no rate counters, KEYS[6...]). Rules in the port's order (gates/base.py, ClaimGate.claim).
--
-- KEYS[1] terms hash   merchant_id, per_user_limit, voucher_ttl_seconds, starts_at, ends_at
--                      ("" when open-ended), cancelled ("1" once cancelled)
-- KEYS[2] stock        vouchers left (a string integer)
-- KEYS[3] users hash   user_id -> vouchers issued to that user
-- KEYS[4] claims hash  idempotency field (user and key) -> "issued_at expires_at voucher_id"
-- KEYS[5] outbox       stream of claim events
-- ARGV: user_id, idempotency field, idempotency key, voucher_id, now (epoch seconds),
--       email, phone ("" when the user's token gave none), buckets (how many buckets the
--       caller believes the deal has; the keys are of the user's home bucket among them),
--       replay only ("1": the caller is over a rate limit; answer a replay, else rate_limited)
-- KEYS[6...] claim rate counters to count first (single Redis only: they are in other slots),
-- ARGV[10] their lifetime in seconds, ARGV[11...] their limits: over one, the claim is replay only.
-- Returns {outcome, voucher record or "", stock left, merchant_id, the counters' new values...};
-- {'buckets', '', N, merchant} when the deal has N buckets, not ARGV[8] (nothing changed, nothing
-- counted: the caller asks the right bucket).
-- A bucket is a deal's slot of its own with a part of the stock (gates/redis.py, "Buckets").

local terms = redis.call('HMGET', KEYS[1], 'merchant_id', 'per_user_limit', 'voucher_ttl_seconds',
  'starts_at', 'ends_at', 'cancelled', 'buckets')
local merchant = terms[1]
local buckets = tonumber(terms[7] or '1')
if merchant and buckets ~= tonumber(ARGV[8]) then
  return {'buckets', '', buckets, merchant}
end

local replay_only = ARGV[9] == '1'
local hits = {}
for i = 6, #KEYS do
  local hit = redis.call('INCR', KEYS[i])
  if hit == 1 then
    redis.call('EXPIRE', KEYS[i], ARGV[10])
  end
  if hit > tonumber(ARGV[i + 5]) then
    replay_only = true
  end
  hits[i - 5] = hit
end
local function answer(outcome, record, stock)
  local reply = {outcome, record, stock, merchant or ''}
  for _, hit in ipairs(hits) do
    table.insert(reply, hit)
  end
  return reply
end

if not merchant then
  return answer(replay_only and 'rate_limited' or 'unknown_deal', '', -1)
end
local stock = tonumber(redis.call('GET', KEYS[2]) or '0')

local prior = redis.call('HGET', KEYS[4], ARGV[2])
if prior then
  return answer('replayed', prior, stock)
end
if replay_only then
  return answer('rate_limited', '', stock)
end

local now = tonumber(ARGV[5])
local starts_at, ends_at = tonumber(terms[4]), tonumber(terms[5])
if terms[6] == '1' or (starts_at and now < starts_at) or (ends_at and now >= ends_at) then
  return answer('sale_not_open', '', stock)
end
if stock <= 0 then
  return answer('sold_out', '', 0)
end
local claimed = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
if claimed >= tonumber(terms[2]) then
  return answer('limit_reached', '', stock)
end

local expires_at = now + tonumber(terms[3])
local record = ARGV[5] .. ' ' .. expires_at .. ' ' .. ARGV[4]
stock = redis.call('DECR', KEYS[2])
redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
redis.call('HSET', KEYS[4], ARGV[2], record)
local event = {'voucher_id', ARGV[4], 'merchant_id', merchant, 'user_id', ARGV[1],
  'idempotency_key', ARGV[3], 'issued_at', ARGV[5], 'expires_at', expires_at}
if ARGV[6] ~= '' then table.insert(event, 'email'); table.insert(event, ARGV[6]) end
if ARGV[7] ~= '' then table.insert(event, 'phone'); table.insert(event, ARGV[7]) end
redis.call('XADD', KEYS[5], '*', unpack(event))
return answer('issued', record, stock)
