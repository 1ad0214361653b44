-- ARGV: prefix, id, owner, fence. Returns 'ok', 'stale' or 'missing'.
-- Back to pending at once; the attempt is not counted.
local id = ARGV[2]
local held = check_lease(id, ARGV[3], ARGV[4])
if held ~= 'ok' then return held end
local k = jkey(id)
local now = now_ms()
end_lease(id)
local attempts = tonumber(redis.call('HGET', k, 'attempts'))
if attempts > 0 then attempts = attempts - 1 end
redis.call('HSET', k, 'state', 'pending', 'attempts', attempts, 'ready_at', now, 'updated_at', now)
redis.call('ZADD', P .. ':ready', now, id)
move_state(id, 'running', 'pending')
return 'ok'
