-- ARGV: prefix, owner, lease_ms, max. Returns the claimed jobs as JSON.
local now = now_ms()
local expires = now + tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', P .. ':ready', '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZREM', P .. ':ready', id)
  local k = jkey(id)
  if redis.call('HGET', k, 'state') == 'pending' then
    redis.call('HINCRBY', k, 'fence', 1)
    redis.call('HINCRBY', k, 'attempts', 1)
    redis.call('HSET', k, 'state', 'running', 'owner', ARGV[2],
      'lease_expires_at', expires, 'updated_at', now)
    redis.call('ZADD', P .. ':leases', expires, id)
    move_state(id, 'pending', 'running')
    table.insert(out, job_table(id))
  end
end
if #out == 0 then return '[]' end
return cjson.encode(out)
