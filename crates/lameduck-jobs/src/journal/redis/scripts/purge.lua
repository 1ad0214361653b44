-- ARGV: prefix, older_than_ms, max
-- Deletes up to max completed or dead jobs last updated more than
-- older_than_ms ago, oldest ids first, with their idempotency keys.
-- Returns how many were deleted.
local cutoff = now_ms() - tonumber(ARGV[2])
local left = tonumber(ARGV[3])
local deleted = 0
for _, state in ipairs({ 'completed', 'dead' }) do
  if left <= 0 then break end
  local set = P .. ':state:' .. state
  local ids = redis.call('ZRANGE', set, 0, left - 1)
  for _, id in ipairs(ids) do
    local h = redis.call('HMGET', jkey(id), 'updated_at', 'idempotency_key')
    if h[1] and tonumber(h[1]) < cutoff then
      if h[2] then redis.call('DEL', P .. ':idem:' .. h[2]) end
      redis.call('DEL', jkey(id))
      redis.call('ZREM', set, id)
      deleted = deleted + 1
      left = left - 1
    end
  end
end
return deleted
