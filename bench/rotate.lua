-- wrk script for bench/run scenario 3: every request carries the next token of a pool of
-- distinct valid tokens (one per line in a file), round-robin.
--   wrk ... -s bench/rotate.lua URL TOKEN_FILE COUNT
-- The requests are formatted once in init(), so request() costs wrk nothing.
-- With several wrk threads each starts at a different place in the pool.
local nthreads = 0
function setup(thread)
   thread:set("id", nthreads)
   nthreads = nthreads + 1
end

local reqs, n, i = {}, 0, 0

function init(args)
   local file, count = args[1], tonumber(args[2])
   for line in io.lines(file) do
      if line ~= "" then
         n = n + 1
         reqs[n] = wrk.format(nil, nil, { ["Cf-Access-Jwt-Assertion"] = line })
         if n >= count then break end
      end
   end
   if n == 0 then error("no tokens in " .. file) end
   local id = tonumber(wrk.thread:get("id")) or 0
   i = (id * 7919) % n
end

function request()
   i = i % n + 1
   return reqs[i]
end
