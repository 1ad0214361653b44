-- ARGV: prefix, id, owner, fence, error, retry_ms.
-- Returns 'ok:pending', 'ok:dead', 'stale' or 'missing'.
local id = ARGV[2]
local held = check_lease(id, ARGV[3], ARGV[4])
if held ~= 'ok' then return held end
local k = jkey(id)
local now = now_ms()
end_lease(id)
redis.call('HSET', k, 'last_error', ARGV[5], 'updated_at', now)
local h = redis.call('HMGET', k, 'attempts', 'max_attempts')
if tonumber(h[1]) >= tonumber(h[2]) then
  redis.call('HSET', k, 'state', 'dead')
  move_state(id, 'running', 'dead')
  return 'ok:dead'
end
local ready = now + tonumber(ARGV[6])
redis.call('HSET', k, 'state', 'pending', 'ready_at', ready)
redis.call('ZADD', P .. ':ready', ready, id)
move_state(id, 'running', 'pending')
return 'ok:pending'
