-- wrk script for lossd's benchmark: POST a prepared body, check every answer, report one line.
-- BENCH_BODY: file with the body; BENCH_TYPE: content type; BENCH_HEADER: optional "Name: value";
-- BENCH_PATTERN: Lua pattern capturing the loss; BENCH_EXPECTED, BENCH_TOLERANCE: the right answer.
wrk.method = "POST"
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = os.getenv("BENCH_TYPE")
local extra = os.getenv("BENCH_HEADER")
if extra and extra ~= "" then
  local name, value = extra:match("^([^:]+):%s*(.*)$")
  wrk.headers[name] = value
end
local pattern = os.getenv("BENCH_PATTERN")
local expected = tonumber(os.getenv("BENCH_EXPECTED"))
local tolerance = tonumber(os.getenv("BENCH_TOLERANCE"))

-- A body holding @ID@ gets a new value there in every request (a session's batch id): "<n>"
local at = wrk.body:find("@ID@", 1, true)
if at then
  local prefix, suffix = wrk.body:sub(1, at - 1), wrk.body:sub(at + 4)
  local counter = 0
  function request()
    counter = counter + 1
    return wrk.format(nil, nil, nil, prefix .. counter .. suffix)
  end
end

local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  wrong = 0
end

function response(status, headers, body)
  local value = status == 200 and tonumber(body:match(pattern)) or nil
  if value == nil or math.abs(value - expected) > tolerance then
    wrong = wrong + 1
  end
end

function done(summary, latency, requests)
  local bad = 0
  for _, thread in ipairs(threads) do
    bad = bad + thread:get("wrong")
  end
  io.write(string.format("BENCH requests=%d wrong=%d errors=%d duration_us=%d p50_us=%d p99_us=%d\n",
    summary.requests, bad, summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.status + summary.errors.timeout, summary.duration,
    latency:percentile(50), latency:percentile(99)))
end
