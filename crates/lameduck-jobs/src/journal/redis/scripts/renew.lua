-- ARGV: prefix, id, owner, fence, lease_ms. Returns 'ok:<expires_at>', 'stale' or 'missing'.
local id = ARGV[2]
local held = check_lease(id, ARGV[3], ARGV[4])
if held ~= 'ok' then return held end
local now = now_ms()
local expires = now + tonumber(ARGV[5])
redis.call('HSET', jkey(id), 'lease_expires_at', expires, 'updated_at', now)
redis.call('ZADD', P .. ':leases', expires, id)
return 'ok:' .. string.format('%d', expires)
