-- ARGV: prefix, kind, payload, max_attempts, delay_ms, idempotency_key ('' for none),
--       digest of kind and payload, payload version
-- Returns {id, 1} created, {id, 0} the key's first job, {id, 2} the key went
-- to another job (digests differ; a job stored without one counts as the same).
local key = ARGV[6]
if key ~= '' then
  local existing = redis.call('GET', P .. ':idem:' .. key)
  if existing then
    local first = redis.call('HGET', jkey(existing), 'payload_digest')
    if first and first ~= ARGV[7] then return { tonumber(existing), 2 } end
    return { tonumber(existing), 0 }
  end
end
local id = redis.call('INCR', P .. ':seq')
local now = now_ms()
local ready = now + tonumber(ARGV[5])
redis.call('HSET', jkey(id), 'kind', ARGV[2], 'payload', ARGV[3], 'state', 'pending',
  'attempts', 0, 'max_attempts', ARGV[4], 'fence', 0, 'ready_at', ready,
  'created_at', now, 'updated_at', now, 'payload_version', ARGV[8])
if key ~= '' then
  redis.call('SET', P .. ':idem:' .. key, id)
  redis.call('HSET', jkey(id), 'idempotency_key', key, 'payload_digest', ARGV[7])
end
redis.call('ZADD', P .. ':ready', ready, id)
move_state(id, nil, 'pending')
return { id, 1 }
