//! Lua scripts that make multi-key steps atomic on one Redis (or one Cluster slot: every key a
//! script touches carries the channel's hash tag).
//!
//! Scripts are sent with EVALSHA and loaded on a NOSCRIPT miss (`redis::Script` does that), so
//! a restarted Redis costs one extra round trip, not an error.

use std::sync::LazyLock;

use redis::Script;

/// Publish, with or without history, idempotently, dropping stale versions.
///
/// KEYS: stream, meta, and the idempotency result key when there is one (an absent key rather
/// than an empty one: on a Cluster every key must hash to the channel's slot).
/// ARGV: 1 publication (Protobuf), 2 history size (0 = no history), 3 history TTL s,
/// 4 PUB/SUB channel, 5 meta TTL s, 6 epoch to use if the stream has none, 7 `publish` or
/// `spublish`, 8 idempotency result TTL s, 9 `1` to send the previous publication along for
/// delta compression, 10 version (`0` = unversioned), 11 version epoch, 12 `1` when history is
/// a list (`history_use_lists`: KEYS[1] a list, newest first, of `__p1:`-framed entries).
/// Returns `{offset, epoch, deduplicated, suppressed}`.
///
/// With history: the epoch is created when the meta is missing; a versioned publication whose
/// version the meta already holds (or exceeds) within the same version epoch is dropped and the
/// current top returned; otherwise the offset is incremented, and if the meta was lost (offset
/// back at 1) leftover entries of the old epoch are dropped before the new entry is added. The
/// PUB/SUB message carries the position in its header (`__p1:`), and with delta also the
/// previous publication (`__d1:`, Centrifugo's framing), so subscribers see exactly the offsets
/// that history stores. Versions live in the meta hash (`v`, `ve`) as Centrifugo keeps them.
pub static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local result_key = KEYS[3] or ''
if result_key ~= '' then
  local cached = redis.call('hmget', result_key, 'e', 's')
  if cached[1] then
    return {tonumber(cached[2]), cached[1], 1, 0}
  end
end
local offset = 0
local epoch = ''
if ARGV[2] ~= '0' then
  epoch = redis.call('hget', KEYS[2], 'e')
  if not epoch then
    epoch = ARGV[6]
    redis.call('hset', KEYS[2], 'e', epoch)
  end
  if ARGV[10] ~= '0' then
    local held = redis.call('hmget', KEYS[2], 'v', 've', 's')
    if held[1] and (ARGV[11] == '' or ARGV[11] == held[2]) and tonumber(held[1]) >= tonumber(ARGV[10]) then
      return {tonumber(held[3] or '0'), epoch, 0, 1}
    end
    redis.call('hset', KEYS[2], 'v', ARGV[10], 've', ARGV[11])
  end
  offset = redis.call('hincrby', KEYS[2], 's', 1)
  if ARGV[5] ~= '0' then
    redis.call('expire', KEYS[2], ARGV[5])
  end
  local previous = ''
  local lists = ARGV[12] == '1'
  if offset == 1 then
    redis.call('del', KEYS[1])
  elseif ARGV[9] == '1' and lists then
    local last = redis.call('lindex', KEYS[1], 0)
    local body = last and string.find(last, '__', 6, true)
    if body then previous = string.sub(last, body + 2) end
  elseif ARGV[9] == '1' then
    local last = redis.call('xrevrange', KEYS[1], '+', '-', 'COUNT', 1)
    if #last > 0 then
      local fields = last[1][2]
      for i = 1, #fields, 2 do
        if fields[i] == 'd' then previous = fields[i + 1] end
      end
    end
  end
  if lists then
    redis.call('lpush', KEYS[1], '__p1:' .. offset .. ':' .. epoch .. '__' .. ARGV[1])
    redis.call('ltrim', KEYS[1], 0, tonumber(ARGV[2]) - 1)
  else
    redis.call('xadd', KEYS[1], 'MAXLEN', ARGV[2], offset .. '-0', 'd', ARGV[1])
  end
  redis.call('expire', KEYS[1], ARGV[3])
  if ARGV[9] == '1' then
    redis.call(ARGV[7], ARGV[4], '__d1:' .. offset .. ':' .. epoch .. ':' .. #previous .. ':' .. previous
      .. ':' .. #ARGV[1] .. ':' .. ARGV[1])
  else
    redis.call(ARGV[7], ARGV[4], '__p1:' .. offset .. ':' .. epoch .. '__' .. ARGV[1])
  end
else
  redis.call(ARGV[7], ARGV[4], ARGV[1])
end
if result_key ~= '' then
  redis.call('hset', result_key, 'e', epoch, 's', offset)
  redis.call('expire', result_key, ARGV[8])
end
return {offset, epoch, 0, 0}
"#,
    )
});

/// Stream position and (optionally) publications.
///
/// KEYS: stream, meta.
/// ARGV: 1 include publications (`0`/`1`), 2 since offset (`""` = from the start/end),
/// 3 reverse (`0`/`1`), 4 limit (`-1` = all), 5 meta TTL s (`0` = keep).
/// Returns `{top offset, epoch, entries}` with entries as XRANGE gives them.
///
/// Reading creates nothing (a loop over random channel names must not grow Redis): a stream
/// without meta answers offset 0 and an empty epoch; the first publication starts the epoch
/// and carries it to subscribers (offset 1 pushes name their epoch), and an empty epoch in a
/// recovery request means any epoch.
pub static HISTORY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local epoch = redis.call('hget', KEYS[2], 'e')
if not epoch then
  -- No stream (or its meta expired): nothing is created by a read; leftover entries of a
  -- forgotten epoch are dropped by the next publish.
  return {0, '', {}}
end
local top = tonumber(redis.call('hget', KEYS[2], 's') or '0')
if ARGV[5] ~= '0' then
  redis.call('expire', KEYS[2], ARGV[5])
end
if ARGV[1] == '0' then
  return {top, epoch, {}}
end
local limit = tonumber(ARGV[4])
local entries
if ARGV[3] == '0' then
  local from = '-'
  if ARGV[2] ~= '' then from = '(' .. ARGV[2] .. '-0' end
  if limit >= 0 then
    entries = redis.call('xrange', KEYS[1], from, '+', 'COUNT', limit)
  else
    entries = redis.call('xrange', KEYS[1], from, '+')
  end
else
  local to = '+'
  if ARGV[2] ~= '' then to = '(' .. ARGV[2] .. '-0' end
  if limit >= 0 then
    entries = redis.call('xrevrange', KEYS[1], to, '-', 'COUNT', limit)
  else
    entries = redis.call('xrevrange', KEYS[1], to, '-')
  end
end
return {top, epoch, entries}
"#,
    )
});

/// History kept in a list (`history_use_lists`): the position and, when asked, every entry
/// (newest first, `__p1:`-framed); filtering by `since`, `limit` and direction is the caller's.
///
/// KEYS: list, meta. ARGV: 1 include entries (`0`/`1`), 2 meta TTL s (`0` = keep). Returns
/// `{top offset, epoch, entries}`; nothing is created for a list without meta.
pub static HISTORY_LIST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local epoch = redis.call('hget', KEYS[2], 'e')
if not epoch then
  return {0, '', {}}
end
local top = tonumber(redis.call('hget', KEYS[2], 's') or '0')
if ARGV[2] ~= '0' then
  redis.call('expire', KEYS[2], ARGV[2])
end
if ARGV[1] == '0' then
  return {top, epoch, {}}
end
return {top, epoch, redis.call('lrange', KEYS[1], 0, -1)}
"#,
    )
});

/// Adds or refreshes one connection's presence; with user mapping on, counts the user's
/// connections too (a refresh is not a new connection).
///
/// KEYS: presence data hash, presence expiry zset, user count hash, user expiry zset.
/// ARGV: 1 client id, 2 ClientInfo (Protobuf), 3 TTL s, 4 expire-at (unix s), 5 user,
/// 6 user mapping ("1" or "0").
pub static ADD_PRESENCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local mapped = ARGV[6] == '1'
local fresh = mapped and redis.call('hexists', KEYS[1], ARGV[1]) == 0
redis.call('zadd', KEYS[2], ARGV[4], ARGV[1])
redis.call('hset', KEYS[1], ARGV[1], ARGV[2])
redis.call('expire', KEYS[1], ARGV[3])
redis.call('expire', KEYS[2], ARGV[3])
if mapped then
  if fresh then
    redis.call('hincrby', KEYS[3], ARGV[5], 1)
  end
  redis.call('expire', KEYS[3], ARGV[3])
  redis.call('zadd', KEYS[4], ARGV[4], ARGV[5])
  redis.call('expire', KEYS[4], ARGV[3])
end
return 1
"#,
    )
});

/// Removes one connection's presence; with user mapping on, the user goes when its last
/// connection does.
///
/// KEYS: as `ADD_PRESENCE`. ARGV: 1 client id, 2 user, 3 user mapping ("1" or "0").
pub static REMOVE_PRESENCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local present = redis.call('hdel', KEYS[1], ARGV[1]) == 1
redis.call('zrem', KEYS[2], ARGV[1])
if ARGV[3] == '1' and present then
  if redis.call('hincrby', KEYS[3], ARGV[2], -1) <= 0 then
    redis.call('hdel', KEYS[3], ARGV[2])
    redis.call('zrem', KEYS[4], ARGV[2])
  end
end
return 1
"#,
    )
});

/// Connection and user counts from the per-user keys (user mapping on), after dropping
/// connections and users whose presence expired; no presence is read.
///
/// KEYS: as `ADD_PRESENCE`. ARGV: 1 now (unix s). Returns `{connections, users}`.
pub static PRESENCE_STATS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
for _, pair in ipairs({{KEYS[2], KEYS[1]}, {KEYS[4], KEYS[3]}}) do
  local expired = redis.call('zrangebyscore', pair[1], '0', ARGV[1])
  if #expired > 0 then
    for _, member in ipairs(expired) do
      redis.call('hdel', pair[2], member)
    end
    redis.call('zremrangebyscore', pair[1], '0', ARGV[1])
  end
end
return {redis.call('hlen', KEYS[1]), redis.call('hlen', KEYS[3])}
"#,
    )
});

/// Current presence, after dropping entries whose connection stopped refreshing them (its node
/// died, say).
///
/// KEYS: as `ADD_PRESENCE` (the first two used). ARGV: 1 now (unix s).
/// Returns HGETALL's flat `{client, info, …}`.
pub static PRESENCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local expired = redis.call('zrangebyscore', KEYS[2], '0', ARGV[1])
if #expired > 0 then
  for _, client in ipairs(expired) do
    redis.call('hdel', KEYS[1], client)
  end
  redis.call('zremrangebyscore', KEYS[2], '0', ARGV[1])
end
return redis.call('hgetall', KEYS[1])
"#,
    )
});
