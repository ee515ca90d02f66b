-- wrk script recording every request: start time (CLOCK_MONOTONIC, so it lines up with
-- Python's time.monotonic()), latency, status and the "model_version" answered.
-- Run with as many threads as connections (-tN -cN): one connection per thread, so request()
-- and response() strictly alternate in each thread and the latency pairs are exact.
-- Usage: BENCH_RECORD_FILE=out.tsv wrk -tN -cN ... -s benchmarks/record.lua URL -- BODY_FILE

local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local CLOCK_MONOTONIC = 1

local function now_us()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1000000 + tonumber(ts.tv_nsec) / 1000
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local f = assert(io.open(args[1], "rb"))
  wrk.method = "POST"
  wrk.body = f:read("*a")
  f:close()
  wrk.headers["Content-Type"] = "application/json"
  n = 0
  starts, lats, codes, vers = {}, {}, {}, {}
  pending = nil
end

function request()
  pending = now_us()
  return wrk.format()
end

function response(status, headers, body)
  local t = now_us()
  local s = pending or t
  n = n + 1
  starts[n] = s
  lats[n] = t - s
  codes[n] = status
  vers[n] = (body and string.match(body, '"model_version":%s*"([^"]*)"')) or "-"
  pending = nil
end

function done(summary, latency, requests)
  local out = assert(io.open(os.getenv("BENCH_RECORD_FILE"), "w"))
  for _, thread in ipairs(threads) do
    local k = thread:get("n") or 0
    local s, l, c, v = thread:get("starts"), thread:get("lats"), thread:get("codes"),
      thread:get("vers")
    for i = 1, k do
      out:write(string.format("%.1f\t%.1f\t%d\t%s\n", s[i], l[i], c[i], v[i]))
    end
  end
  out:close()
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"stdev":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d},' ..
    '"versions":{},"statuses":{}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max, latency.stdev,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
