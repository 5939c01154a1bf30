-- wrk script for the HTTP serving benchmarks of `just bench-compare` (issue #8, section 2).
--
--   wrk -t2 -c32 -d5s -s bench/python/wrk.lua http://127.0.0.1:PORT/predict
--
-- Every request is a POST with Content-Type: application/json and the body:
--   env WRK_BODY  if set (used verbatim), else
--   env WRK_ROW   if set: comma-separated numbers, sent as {"rows": [[...]]}, else
--   a fixed single row of 20 floats (the first row of synth_100000_current.csv).
-- With env WRK_CHECK=1 every response is also checked: status 200 and a body
-- containing WRK_EXPECT (default "predictions"); failures are counted in
-- "bad_responses" (this costs wrk some throughput, so leave it off for the
-- figures and on for the check run).
--
-- At the end, done() prints ONE line of JSON on stdout, after wrk's own report:
--   {"requests":..,"duration_us":..,"bytes":..,"errors":{"connect":..,"read":..,
--    "write":..,"status":..,"timeout":..},"p50_us":..,"p90_us":..,"p99_us":..,
--    "max_us":..,"mean_us":..,"rps":..,"bad_responses":..|null}
-- errors.status counts responses with status > 399; latencies are wrk's (µs).

local default_row = "0.71901606,-0.22064115,-3.2825365,-15.558165,-1.0290352,2.1011167,-3.7724858,"
    .. "2.0925082,-10.677343,2.1789254,0.70137911,-6.4170272,1.2208343,-0.94008723,"
    .. "7.9680058,2.6588118,-2.9677969,3.2488752,2.1935636,2.7138729"

local body = os.getenv("WRK_BODY")
if body == nil or body == "" then
    local row = os.getenv("WRK_ROW")
    if row == nil or row == "" then row = default_row end
    body = '{"rows": [[' .. row .. ']]}'
end

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"

local threads = {}

function setup(thread)
    table.insert(threads, thread)
end

local check = os.getenv("WRK_CHECK")
if check ~= nil and check ~= "" and check ~= "0" then
    local expect = os.getenv("WRK_EXPECT")
    if expect == nil or expect == "" then expect = "predictions" end
    bad = 0
    function response(status, headers, resp_body)
        if status ~= 200 or resp_body == nil or not string.find(resp_body, expect, 1, true) then
            bad = bad + 1
        end
    end
end

function done(summary, latency, requests)
    local bad_total = "null"
    if check ~= nil and check ~= "" and check ~= "0" then
        local n = 0
        for _, t in ipairs(threads) do
            n = n + (tonumber(t:get("bad")) or 0)
        end
        bad_total = tostring(n)
    end
    local e = summary.errors
    local rps = 0
    if summary.duration > 0 then rps = summary.requests / (summary.duration / 1e6) end
    io.write(string.format(
        '{"requests":%d,"duration_us":%d,"bytes":%d,'
        .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
        .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,"rps":%.2f,'
        .. '"bad_responses":%s}\n',
        summary.requests, summary.duration, summary.bytes,
        e.connect, e.read, e.write, e.status, e.timeout,
        latency:percentile(50), latency:percentile(90), latency:percentile(99),
        latency.max, latency.mean, rps, bad_total))
end
