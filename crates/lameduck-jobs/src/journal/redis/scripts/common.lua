-- Shared by every script. ARGV[1] is the key prefix. Times come from the
-- Redis server's clock, so instances with skewed clocks agree on leases.
local P = ARGV[1]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function jkey(id) return P .. ':job:' .. id end

local function move_state(id, from, to)
  if from then redis.call('ZREM', P .. ':state:' .. from, id) end
  redis.call('ZADD', P .. ':state:' .. to, id, id)
end

local function job_table(id)
  local flat = redis.call('HGETALL', jkey(id))
  local t = { id = tostring(id) }
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t
end

-- 'ok' when (owner, fence) is the job's current running lease.
local function check_lease(id, owner, fence)
  local h = redis.call('HMGET', jkey(id), 'state', 'fence', 'owner')
  if not h[1] then return 'missing' end
  if h[1] ~= 'running' or h[2] ~= fence or h[3] ~= owner then return 'stale' end
  return 'ok'
end

-- Ends a lease: off the lease set, no owner.
local function end_lease(id)
  redis.call('ZREM', P .. ':leases', id)
  redis.call('HDEL', jkey(id), 'owner', 'lease_expires_at')
end
