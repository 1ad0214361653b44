-- Appends one message, atomically with its offset, its idempotency key and
-- the trimming. The offset lives in the topic's hash next to its epoch, so
-- a Redis restored from an older snapshot carries the older offset with
-- its epoch (readers see positions ahead of the head), and a flushed Redis
-- starts a new epoch.
--
-- KEYS: 1 topic hash, 2 log stream, 3 idempotency key (unused without one)
-- ARGV: 1 epoch for a new history, 2 payload, 3 content type,
--       4 '1' if there is a content type, 5 digest, 6 key window (ms),
--       7 messages kept, 8 age kept (ms), 9 '1' if there is a key,
--       10 notification channel, 11 topic name
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  -- A new history: whatever log is left of an older one is not part of it.
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'last', 0)
  epoch = ARGV[1]
end
if ARGV[9] == '1' then
  local seen = redis.call('GET', KEYS[3])
  if seen then
    local e, o, d = string.match(seen, '^(%S+) (%d+) (%S+)$')
    if e == epoch then
      if d ~= ARGV[5] then
        return {'conflict'}
      end
      return {'duplicate', epoch, o}
    end
  end
end
local last = redis.call('HINCRBY', KEYS[1], 'last', 1)
local id = string.format('%d-0', last)
if ARGV[4] == '1' then
  redis.call('XADD', KEYS[2], id, 'p', ARGV[2], 't', now, 'c', ARGV[3])
else
  redis.call('XADD', KEYS[2], id, 'p', ARGV[2], 't', now)
end
if ARGV[9] == '1' then
  redis.call('SET', KEYS[3], epoch .. ' ' .. string.format('%d', last) .. ' ' .. ARGV[5],
    'PX', ARGV[6])
end
local keep = tonumber(ARGV[7])
if last > keep then
  redis.call('XTRIM', KEYS[2], 'MINID', string.format('%d-0', last - keep + 1))
end
-- Age: a bounded number of the oldest messages a publish, which keeps up
-- with any publish rate (each publish adds one).
local cutoff = now - tonumber(ARGV[8])
for _ = 1, 64 do
  local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
  if #oldest == 0 then
    break
  end
  local fields = oldest[1][2]
  local at = nil
  for i = 1, #fields, 2 do
    if fields[i] == 't' then
      at = tonumber(fields[i + 1])
    end
  end
  if at == nil or at >= cutoff then
    break
  end
  redis.call('XDEL', KEYS[2], oldest[1][1])
end
redis.call('PUBLISH', ARGV[10], ARGV[11])
return {'new', epoch, string.format('%d', last)}
