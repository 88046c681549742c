-- wrk script for bench/run's memory measurement: sends each token of lines FIRST ..
-- FIRST+COUNT-1 of a token file exactly once (one wrk thread only), then stops.
--   wrk -t1 ... -s bench/feed.lua URL TOKEN_FILE FIRST COUNT MARKER_FILE
-- Once the tokens are used up, connections still waiting get requests for /done (answered
-- 204 by a location without cf_access, so not verified and not cached); wrk stops as soon
-- as every token request has been answered: the thread creates MARKER_FILE and stops, and
-- bench/run sends wrk SIGINT. done() prints "feed ok=N bad=M".
local thread
function setup(t) thread = t end

ok, bad = 0, 0 -- globals, read by done() through thread:get()
local f, left, target, done_req, marker
local finished = false

function init(args)
   f = assert(io.open(args[1], "r"))
   local first, count = tonumber(args[2]), tonumber(args[3])
   for _ = 1, first - 1 do
      if not f:read("*l") then break end
   end
   left, target = count, count
   marker = args[4]
   done_req = wrk.format("GET", "/done")
end

-- wrk calls request() once after init() to check the script (thread 0's state) and throws
-- that request away: answer that call without using a token.
local primed = false

function request()
   if not primed then
      primed = true
      return done_req
   end
   if left > 0 then
      local t = f:read("*l")
      if t and t ~= "" then
         left = left - 1
         return wrk.format(nil, nil, { ["Cf-Access-Jwt-Assertion"] = t })
      end
      target = target - left -- the file ran out early
      left = 0
   end
   return done_req
end

function response(status, headers, body)
   if status == 204 then return end
   if status == 200 then ok = ok + 1 else bad = bad + 1 end
   if ok + bad >= target and not finished then
      -- Done: stop this thread and tell bench/run (which then ends wrk with SIGINT: wrk's
      -- main thread otherwise sleeps for the whole -d duration).
      finished = true
      local m = io.open(marker, "w")
      if m then m:close() end
      wrk.thread:stop()
   end
end

function done(summary, latency, requests)
   io.write(string.format("feed ok=%d bad=%d\n", thread:get("ok"), thread:get("bad")))
end
