-- ARGV: prefix. Takes back every job whose lease expired; returns how many.
local now = now_ms()
local ids = redis.call('ZRANGEBYSCORE', P .. ':leases', '-inf', now)
local n = 0
for _, id in ipairs(ids) do
  local k = jkey(id)
  local h = redis.call('HMGET', k, 'state', 'attempts', 'max_attempts')
  end_lease(id)
  if h[1] == 'running' then
    n = n + 1
    if tonumber(h[2]) >= tonumber(h[3]) then
      redis.call('HSET', k, 'state', 'dead', 'last_error', 'lease expired on the last attempt',
        'updated_at', now)
      move_state(id, 'running', 'dead')
    else
      redis.call('HSET', k, 'state', 'pending', 'ready_at', now, 'updated_at', now)
      redis.call('ZADD', P .. ':ready', now, id)
      move_state(id, 'running', 'pending')
    end
  end
end
return n
