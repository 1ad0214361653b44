-- The head and up to a limit of messages after an offset, in one atomic
-- read, so that the messages belong to the head's history. A topic with
-- no history gets one (a new epoch).
--
-- KEYS: 1 topic hash, 2 log stream
-- ARGV: 1 epoch for a new history, 2 first stream id to read ('N-0'),
--       3 limit (0: the head only)
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local last
if not epoch then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'last', 0)
  epoch = ARGV[1]
  last = '0'
else
  last = redis.call('HGET', KEYS[1], 'last') or '0'
end
local first = ''
local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if #oldest > 0 then
  first = oldest[1][1]
end
local messages = {}
local limit = tonumber(ARGV[3])
if limit > 0 then
  messages = redis.call('XRANGE', KEYS[2], ARGV[2], '+', 'COUNT', limit)
end
return {epoch, last, first, messages}
