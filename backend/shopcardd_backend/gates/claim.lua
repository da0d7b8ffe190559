-- The claim step of the Redis gate (gates/redis.py): decide one claim and record it, atomically.
-- Every key is of one deal, under its hash tag {deal_id}: the script is single-slot and runs
-- unchanged on Redis Cluster. Rules in the port's order (gates/base.py, ClaimGate.claim).
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
-- Returns {outcome, voucher record or "", stock left, merchant_id}; {'buckets', '', N, merchant}
-- when the deal has N buckets, not ARGV[8] (nothing changed: the caller asks the right bucket).
-- A bucket is a deal's slot of its own with a part of the stock (gates/redis.py, "Buckets").

local terms = redis.call('HMGET', KEYS[1], 'merchant_id', 'per_user_limit', 'voucher_ttl_seconds',
  'starts_at', 'ends_at', 'cancelled', 'buckets')
local merchant = terms[1]
local replay_only = ARGV[9] == '1'
if not merchant then
  return {replay_only and 'rate_limited' or 'unknown_deal', '', -1, ''}
end
local buckets = tonumber(terms[7] or '1')
if buckets ~= tonumber(ARGV[8]) then
  return {'buckets', '', buckets, merchant}
end
local stock = tonumber(redis.call('GET', KEYS[2]) or '0')

local prior = redis.call('HGET', KEYS[4], ARGV[2])
if prior then
  return {'replayed', prior, stock, merchant}
end
if replay_only then
  return {'rate_limited', '', stock, merchant}
end

local now = tonumber(ARGV[5])
local starts_at, ends_at = tonumber(terms[4]), tonumber(terms[5])
if terms[6] == '1' or (starts_at and now < starts_at) or (ends_at and now >= ends_at) then
  return {'sale_not_open', '', stock, merchant}
end
if stock <= 0 then
  return {'sold_out', '', 0, merchant}
end
local claimed = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
if claimed >= tonumber(terms[2]) then
  return {'limit_reached', '', stock, merchant}
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
return {'issued', record, stock, merchant}
