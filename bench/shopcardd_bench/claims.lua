-- wrk script of `shopcardd-bench claims`: claims from many users, a fresh Idempotency-Key each.
-- wrk -s claims.lua URL -- TOKENS_FILE PATH RUN THREADS MODE OFFSET [COLD_FILE COLD_SHARE [RATE]]
--   TOKENS_FILE  one user bearer token per line (every API process has them cached, after the
--                bench's warm-up); PATH the claim path to POST to
--   RUN          a tag that makes this run's Idempotency-Keys unique
--   THREADS      wrk's -t, so that the threads' request numbers never meet
--   MODE         "claim", or "warm": no Idempotency-Key, so the API checks (and caches) the
--                token and answers 422 without claiming
--   OFFSET       where in the token list this run starts (a multiple of THREADS)
--   COLD_FILE    tokens no API process has seen, each sent once (threads take turns in it)
--   COLD_SHARE   the share of the claims (0 to 1) that bring a token of COLD_FILE; when the
--                file runs out, a claim takes a cached token instead and counts as "cold_short"
--   RATE         claims per second of each thread, sent on a schedule (0 or none: as fast as
--                the connections go); a claim late on its schedule is sent at once
-- done() prints the outcome counts and the requests per second of wall clock, one per line.

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_usec; } shopcardd_timeval;
  int gettimeofday(shopcardd_timeval *tv, void *tz);
]]
local clock = ffi.new("shopcardd_timeval")

local function now_ms()
  ffi.C.gettimeofday(clock, nil)
  return tonumber(clock.tv_sec) * 1000 + tonumber(clock.tv_usec) / 1000
end

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

local tokens, cold, path, run, step, mode = {}, {}, nil, nil, 1, "claim"
local n, share, owed, cold_n = 0, 0, 0, 0
local interval, due = 0, nil
statuses, seconds, cold_sent, cold_short = {}, {}, 0, 0

function init(args)
  for line in io.lines(args[1]) do
    if #line > 0 then tokens[#tokens + 1] = line end
  end
  path, run, step, mode = args[2], args[3], tonumber(args[4]), args[5]
  n = id + tonumber(args[6])
  if args[7] then
    for line in io.lines(args[7]) do
      if #line > 0 then cold[#cold + 1] = line end
    end
    share = tonumber(args[8])
  end
  local rate = tonumber(args[9] or "0")
  if rate > 0 then interval = 1000 / rate end
  cold_n = id - step
end

function request()
  n = n + step
  local token = tokens[n % #tokens + 1]
  owed = owed + share
  if owed >= 1 then
    owed = owed - 1
    cold_n = cold_n + step
    if cold_n < #cold then
      token = cold[cold_n + 1]
      cold_sent = cold_sent + 1
    else
      cold_short = cold_short + 1
    end
  end
  local headers = { ["Authorization"] = "Bearer " .. token }
  if mode == "claim" then headers["Idempotency-Key"] = run .. "-" .. n end
  return wrk.format("POST", path, headers)
end

function delay()
  if interval == 0 then return 0 end
  local now = now_ms()
  due = math.max(due or now, now - 1000) + interval  -- at most a second of catching up
  return math.max(due - interval - now, 0)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  local second = os.time()
  seconds[second] = (seconds[second] or 0) + 1
end

function done(summary, latency, requests)
  local totals, per_second, sent, short = {}, {}, 0, 0
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      totals[status] = (totals[status] or 0) + count
    end
    for second, count in pairs(thread:get("seconds")) do
      per_second[second] = (per_second[second] or 0) + count
    end
    sent = sent + thread:get("cold_sent")
    short = short + thread:get("cold_short")
  end
  for status, count in pairs(totals) do io.write(string.format("status %d %d\n", status, count)) end
  for second, count in pairs(per_second) do io.write(string.format("second %d %d\n", second, count)) end
  for _, p in ipairs({ 50, 95, 99 }) do
    io.write(string.format("latency %d %d\n", p, latency:percentile(p)))
  end
  local e = summary.errors
  io.write(string.format("duration_us %d\n", summary.duration))
  io.write(string.format("socket_errors %d\n", e.connect + e.read + e.write + e.timeout))
  io.write(string.format("cold_sent %d\n", sent))
  io.write(string.format("cold_short %d\n", short))
end
