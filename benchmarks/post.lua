-- wrk script: POST one fixed JSON body; print a JSON summary line at the end.
-- Usage: wrk ... -s benchmarks/post.lua URL -- BODY_FILE
-- With BENCH_COUNT_VERSIONS=1 in the environment, responses are also counted by the
-- "model_version" they name (costs the load generator a little: only for the swap runs).

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
  versions = {}
  statuses = {}
end

if os.getenv("BENCH_COUNT_VERSIONS") == "1" then
  function response(status, headers, body)
    statuses[status] = (statuses[status] or 0) + 1
    local v = body and string.match(body, '"model_version":%s*"([^"]*)"')
    if v then
      versions[v] = (versions[v] or 0) + 1
    end
  end
end

local function encode(t)
  local parts = {}
  for k, v in pairs(t) do
    table.insert(parts, string.format('"%s":%d', tostring(k), v))
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

function done(summary, latency, requests)
  local all_versions, all_statuses = {}, {}
  for _, thread in ipairs(threads) do
    for k, v in pairs(thread:get("versions") or {}) do
      all_versions[k] = (all_versions[k] or 0) + v
    end
    for k, v in pairs(thread:get("statuses") or {}) do
      all_statuses[k] = (all_statuses[k] or 0) + v
    end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"stdev":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d},' ..
    '"versions":%s,"statuses":%s}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max, latency.stdev,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9),
    encode(all_versions), encode(all_statuses)))
end
