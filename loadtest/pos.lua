-- wrk script: replay pre-signed POS requests (loadtest/traffic.py writes them).
--   POS_REQUESTS=file POS_RESULT=out.json wrk -t2 -c64 -d20s -s loadtest/pos.lua URL
-- Thread k of n sends lines i with i % n == k, in order, each once; statuses and error codes
-- (the SPEC error body's "code", or a decline's "reason") are counted per thread and written,
-- with wrk's latency percentiles, to POS_RESULT as JSON.

local threads = {}
local counter = 0

function setup(thread)
   thread:set("id", counter)
   table.insert(threads, thread)
   counter = counter + 1
end

function init(args)
   local n = tonumber(os.getenv("POS_THREADS") or "1")
   local path = os.getenv("POS_REQUESTS")
   reqs = {}
   local i = 0
   for line in io.lines(path) do
      if i % n == id then
         local method, p, term, ts, nonce, sig, body =
            line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
         local headers = {
            ["X-Terminal-Id"] = term,
            ["X-Timestamp"] = ts,
            ["X-Nonce"] = nonce,
            ["X-Signature"] = sig,
         }
         if method == "POST" then
            headers["Content-Type"] = "application/json"
         else
            body = nil
         end
         table.insert(reqs, wrk.format(method, p, headers, body))
      end
      i = i + 1
   end
   next_req = 1
   wrapped = 0
   statuses = {}
   codes = {}
end

function request()
   local r = reqs[next_req]
   next_req = next_req + 1
   if next_req > #reqs then
      -- out of fresh requests: what follows are replays the service must refuse (401)
      next_req = 1
      wrapped = wrapped + 1
   end
   return r
end

function response(status, headers, body)
   local s = tostring(status)
   statuses[s] = (statuses[s] or 0) + 1
   if status >= 400 then
      local code = body:match('"code":"([^"]+)"') or body:match('"reason":"([^"]+)"') or "?"
      local key = s .. ":" .. code
      codes[key] = (codes[key] or 0) + 1
   end
end

local function merge(into, from)
   for k, v in pairs(from) do
      into[k] = (into[k] or 0) + v
   end
end

local function json_object(t)
   local parts = {}
   for k, v in pairs(t) do
      table.insert(parts, string.format('"%s": %d', k, v))
   end
   return "{" .. table.concat(parts, ", ") .. "}"
end

function done(summary, latency, requests)
   local all_statuses, all_codes, wraps = {}, {}, 0
   for _, thread in ipairs(threads) do
      merge(all_statuses, thread:get("statuses"))
      merge(all_codes, thread:get("codes"))
      wraps = wraps + thread:get("wrapped")
   end
   local pct = {}
   for _, p in ipairs({50, 75, 90, 99, 99.9}) do
      table.insert(pct, string.format('"%s": %.3f', tostring(p), latency:percentile(p) / 1000))
   end
   local out = io.open(os.getenv("POS_RESULT"), "w")
   out:write(string.format(
      '{"duration_s": %.3f, "requests": %d, "per_s": %.1f, "wrapped": %d, '
         .. '"socket_errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}, '
         .. '"latency_ms": {%s, "mean": %.3f, "max": %.3f}, "statuses": %s, "errors": %s}\n',
      summary.duration / 1e6, summary.requests, summary.requests / (summary.duration / 1e6),
      wraps, summary.errors.connect, summary.errors.read, summary.errors.write,
      summary.errors.timeout, table.concat(pct, ", "), latency.mean / 1000,
      latency.max / 1000, json_object(all_statuses), json_object(all_codes)))
   out:close()
end
