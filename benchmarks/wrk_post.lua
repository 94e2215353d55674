-- POST one file to a URL with wrk and print the result as one JSON line.
--   taskset -c 1 wrk -t1 -c32 -d10s -s benchmarks/wrk_post.lua URL -- BODY_FILE [TOKEN] [CONTENT_TYPE] ["Name: value" ...]
-- TOKEN goes in "Authorization: Bearer TOKEN" (empty: no header); CONTENT_TYPE defaults to
-- application/octet-stream; each further argument is one more header. The last line of output is
--   WRK_JSON {"requests": ..., "requests_per_s": ..., "p50_ms": ..., "codes": {"200": ...}, ...}
-- (benchmarks/load.py reads it). Latencies are wrk's own: from sending a request to its
-- complete response, over all requests of the run.

local threads = {}
local request_text

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   local file = assert(io.open(args[1], "rb"), "cannot open body file " .. tostring(args[1]))
   local body = file:read("*a")
   file:close()
   wrk.method = "POST"
   wrk.body = body
   wrk.headers["Content-Type"] = (args[3] and args[3] ~= "") and args[3] or "application/octet-stream"
   if args[2] and args[2] ~= "" then
      wrk.headers["Authorization"] = "Bearer " .. args[2]
   end
   for i = 4, #args do
      local name, value = args[i]:match("^([^:]+):%s*(.*)$")
      assert(name, "a header argument is 'Name: value', got " .. args[i])
      wrk.headers[name] = value
   end
   request_text = wrk.format()
   codes = {}
end

function request()
   return request_text
end

function response(status, headers, body)
   local key = tostring(status)
   codes[key] = (codes[key] or 0) + 1
end

function done(summary, latency, requests)
   local all_codes = {}
   for _, thread in ipairs(threads) do
      local thread_codes = thread:get("codes") or {}
      for code, count in pairs(thread_codes) do
         all_codes[code] = (all_codes[code] or 0) + count
      end
   end
   local parts = {}
   for code, count in pairs(all_codes) do
      table.insert(parts, string.format('"%s": %d', code, count))
   end
   local seconds = summary.duration / 1e6
   local errors = summary.errors
   local socket_errors = errors.connect + errors.read + errors.write + errors.timeout
   io.write(string.format(
      'WRK_JSON {"requests": %d, "duration_s": %.3f, "requests_per_s": %.1f, ' ..
      '"p50_ms": %.3f, "p95_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f, "mean_ms": %.3f, ' ..
      '"non_2xx": %d, "socket_errors": %d, "timeouts": %d, "codes": {%s}}\n',
      summary.requests, seconds, summary.requests / seconds,
      latency:percentile(50) / 1000, latency:percentile(95) / 1000,
      latency:percentile(99) / 1000, latency.max / 1000, latency.mean / 1000,
      errors.status, socket_errors, errors.timeout, table.concat(parts, ", ")))
end
