-- ARGV: prefix, id, owner, fence, checkpoint. Returns 'ok', 'stale' or 'missing'.
local id = ARGV[2]
local held = check_lease(id, ARGV[3], ARGV[4])
if held ~= 'ok' then return held end
redis.call('HSET', jkey(id), 'checkpoint', ARGV[5], 'updated_at', now_ms())
return 'ok'
