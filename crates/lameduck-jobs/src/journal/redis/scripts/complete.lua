-- ARGV: prefix, id, owner, fence, result ('' for none). Returns 'ok', 'stale' or 'missing'.
local id = ARGV[2]
local held = check_lease(id, ARGV[3], ARGV[4])
if held ~= 'ok' then return held end
end_lease(id)
redis.call('HSET', jkey(id), 'state', 'completed', 'updated_at', now_ms())
if ARGV[5] ~= '' then redis.call('HSET', jkey(id), 'result', ARGV[5]) end
move_state(id, 'running', 'completed')
return 'ok'
