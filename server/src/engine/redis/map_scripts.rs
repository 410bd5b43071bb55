//! Lua of the Redis map broker: every write, expiry and read of one map channel is one script,
//! atomic on the channel's shard (or Cluster slot: all its keys carry the channel's hash tag).
//!
//! Keys of a channel (see `wire::Keys::map`): `state` (hash key → `<offset>:<Publication>`),
//! `keys` (zset of the keys at score 0, for key-ordered pages), `expire` (zset key → expiry in
//! unix ms), `version` (hash key → `<version>:<version epoch>`), `stream` (Redis stream of
//! changes, entry id = offset), `meta` (hash: `e` epoch, `s` top offset). Every script that
//! finds no epoch starts one and drops whatever an earlier epoch left.
//!
//! A removal travels (and is stored in the stream) as the removed entry's Publication followed
//! by the field `removed = true` (`\x60\x01`): Protobuf merges the two, and the reader clears
//! the payload of anything removed, so the removal keeps the entry's key and tags.

use std::sync::LazyLock;

use redis::Script;

/// KEYS of every map script, in this order: state, keys, expire, version, stream, meta.
macro_rules! map_script {
    ($body:expr) => {
        LazyLock::new(|| Script::new(concat!(PRELUDE!(), $body)))
    };
}

/// Shared Lua: the channel's epoch (`ensure_epoch`), TTL bookkeeping (`touch`), appending a
/// change (`append`) and publishing it (`announce`).
macro_rules! PRELUDE {
    () => {
        r#"
local state, keys, expire, versions, stream, meta = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local function ensure_epoch(new_epoch)
  local epoch = redis.call('hget', meta, 'e')
  if epoch then return epoch end
  redis.call('del', state, keys, expire, versions, stream)
  redis.call('hset', meta, 'e', new_epoch)
  return new_epoch
end
local function touch(meta_ttl)
  if meta_ttl ~= '0' then
    for _, key in ipairs({meta, state, keys, expire, versions}) do redis.call('pexpire', key, meta_ttl) end
  end
end
local function append(mode, payload, stream_size, stream_ttl)
  if mode == 'e' then return 0 end
  local offset = redis.call('hincrby', meta, 's', 1)
  redis.call('xadd', stream, 'MAXLEN', stream_size, offset .. '-0', 'd', payload)
  redis.call('pexpire', stream, stream_ttl)
  return offset
end
local function announce(command, channel, offset, epoch, payload, previous)
  if channel == '' then return end
  if offset == 0 then
    redis.call(command, channel, payload)
  elseif previous then
    redis.call(command, channel, '__d1:' .. offset .. ':' .. epoch .. ':' .. #previous .. ':' .. previous
      .. ':' .. #payload .. ':' .. payload)
  else
    redis.call(command, channel, '__p1:' .. offset .. ':' .. epoch .. '__' .. payload)
  end
end
local function body_of(stored)
  return string.sub(stored, string.find(stored, ':', 1, true) + 1)
end
local function forget(key)
  redis.call('hdel', state, key)
  redis.call('zrem', keys, key)
  redis.call('zrem', expire, key)
  redis.call('hdel', versions, key)
end
"#
    };
}

/// Sets one key.
///
/// KEYS: the six channel keys, then the idempotency result key when there is one.
/// ARGV: 1 key, 2 publication (Protobuf, without offset), 3 mode (`e`/`r`/`p`), 4 key TTL ms
/// (0: none), 5 stream size, 6 stream TTL ms, 7 meta TTL ms (0: none), 8 epoch to start,
/// 9 PUB/SUB channel (empty: none), 10 `publish`/`spublish`, 11 key mode (`""`, `if_new`,
/// `if_exists`), 12 `1` to extend the TTL of a key-mode miss, 13 version, 14 version epoch,
/// 15 `1` for delta, 16 now (unix ms), 17 idempotency result TTL s.
/// Returns `{offset, epoch, suppressed reason or ""}`.
pub static MAP_PUBLISH: LazyLock<Script> = map_script!(
    r#"
local key, payload, mode = ARGV[1], ARGV[2], ARGV[3]
local result_key = KEYS[7] or ''
if result_key ~= '' then
  local cached = redis.call('hmget', result_key, 'e', 's')
  if cached[1] then return {tonumber(cached[2]), cached[1], 'idempotency'} end
end
local epoch = ensure_epoch(ARGV[8])
local top = tonumber(redis.call('hget', meta, 's') or '0')
local stored = redis.call('hget', state, key)
if ARGV[13] ~= '0' and stored then
  local held = redis.call('hget', versions, key)
  if held then
    local version, version_epoch = string.match(held, '^(%d+):(.*)$')
    if (ARGV[14] == '' or ARGV[14] == version_epoch) and tonumber(version) >= tonumber(ARGV[13]) then
      return {top, epoch, 'version'}
    end
  end
end
if (ARGV[11] == 'if_new' and stored) or (ARGV[11] == 'if_exists' and not stored) then
  if stored and ARGV[12] == '1' and ARGV[4] ~= '0' then
    redis.call('zadd', expire, tonumber(ARGV[16]) + tonumber(ARGV[4]), key)
    touch(ARGV[7])
  end
  if stored then return {top, epoch, 'key_exists'} end
  return {top, epoch, 'key_not_found'}
end
local previous = nil
if ARGV[15] == '1' and stored then previous = body_of(stored) end
-- How this channel appends, for the expiry script, which runs without the namespace.
redis.call('hset', meta, 'm', mode, 'z', ARGV[5], 't', ARGV[6], 'x', ARGV[7])
local offset = append(mode, payload, ARGV[5], ARGV[6])
redis.call('hset', state, key, offset .. ':' .. payload)
redis.call('zadd', keys, 0, key)
if ARGV[13] ~= '0' then redis.call('hset', versions, key, ARGV[13] .. ':' .. ARGV[14]) end
if ARGV[4] ~= '0' then redis.call('zadd', expire, tonumber(ARGV[16]) + tonumber(ARGV[4]), key) end
touch(ARGV[7])
announce(ARGV[10], ARGV[9], offset, epoch, payload, previous)
if result_key ~= '' then
  redis.call('hset', result_key, 'e', epoch, 's', offset)
  redis.call('expire', result_key, ARGV[17])
end
return {offset, epoch, ''}
"#
);

/// Removes one key.
///
/// KEYS: the six channel keys, then the idempotency result key when there is one.
/// ARGV: 1 key, 2 the removal Publication to use instead of the entry's (tags given by the
/// caller; empty: keep the entry's), 3 mode, 4 stream size, 5 stream TTL ms, 6 meta TTL ms,
/// 7 epoch to start, 8 PUB/SUB channel, 9 `publish`/`spublish`, 10 idempotency result TTL s.
/// Returns `{offset, epoch, suppressed reason or ""}`.
pub static MAP_REMOVE: LazyLock<Script> = map_script!(
    r#"
local key = ARGV[1]
local result_key = KEYS[7] or ''
if result_key ~= '' then
  local cached = redis.call('hmget', result_key, 'e', 's')
  if cached[1] then return {tonumber(cached[2]), cached[1], 'idempotency'} end
end
local epoch = ensure_epoch(ARGV[7])
local stored = redis.call('hget', state, key)
if not stored then
  return {tonumber(redis.call('hget', meta, 's') or '0'), epoch, 'key_not_found'}
end
local payload = ARGV[2]
if payload == '' then payload = body_of(stored) .. '\96\1' end
forget(key)
local offset = append(ARGV[3], payload, ARGV[4], ARGV[5])
touch(ARGV[6])
announce(ARGV[9], ARGV[8], offset, epoch, payload, nil)
if result_key ~= '' then
  redis.call('hset', result_key, 'e', epoch, 's', offset)
  redis.call('expire', result_key, ARGV[10])
end
return {offset, epoch, ''}
"#
);

/// Removes up to a batch of keys whose TTL ran out, each like a removal, appending as the
/// channel's last write said (meta fields `m`, `z`, `t`, `x`).
///
/// KEYS: the six channel keys. ARGV: 1 now (unix ms), 2 batch size, 3 PUB/SUB channel,
/// 4 `publish`/`spublish`.
/// Returns the next expiry in unix ms, or 0 when no key expires any more.
pub static MAP_EXPIRE: LazyLock<Script> = map_script!(
    r#"
local epoch = redis.call('hget', meta, 'e')
if not epoch then
  redis.call('del', state, keys, expire, versions, stream)
  return 0
end
local how = redis.call('hmget', meta, 'm', 'z', 't', 'x')
local mode, stream_size, stream_ttl, meta_ttl = how[1] or 'e', how[2] or '100', how[3] or '60000', how[4] or '0'
local due = redis.call('zrangebyscore', expire, '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, key in ipairs(due) do
  local stored = redis.call('hget', state, key)
  forget(key)
  if stored then
    local payload = body_of(stored) .. '\96\1'
    local offset = append(mode, payload, stream_size, stream_ttl)
    announce(ARGV[4], ARGV[3], offset, epoch, payload, nil)
  end
end
if #due > 0 then touch(meta_ttl) end
local next_due = redis.call('zrange', expire, 0, 0, 'WITHSCORES')
if #next_due == 0 then return 0 end
return tonumber(next_due[2])
"#
);

/// A page of state in key order.
///
/// KEYS: the six channel keys. ARGV: 1 cursor (the last key of the previous page; `""`: from
/// the start), 2 limit (-1 all, 0 none), 3 one key to read (`""`: a page), 4 epoch the caller
/// expects (`""`: any), 5 epoch to start, 6 meta TTL ms.
/// Returns `{top, epoch, next cursor, {key, stored, …}}`, or `{"unrecoverable"}` when the
/// channel is in another epoch.
pub static MAP_READ_STATE: LazyLock<Script> = map_script!(
    r#"
local epoch = ensure_epoch(ARGV[5])
if ARGV[4] ~= '' and ARGV[4] ~= epoch then return {'unrecoverable'} end
touch(ARGV[6])
local top = tonumber(redis.call('hget', meta, 's') or '0')
local limit = tonumber(ARGV[2])
local found = {}
local cursor = ''
if ARGV[3] ~= '' then
  local stored = redis.call('hget', state, ARGV[3])
  if stored then found = {ARGV[3], stored} end
  return {top, epoch, '', found}
end
if limit == 0 then return {top, epoch, '', found} end
local from = '-'
if ARGV[1] ~= '' then from = '(' .. ARGV[1] end
local names
if limit > 0 then
  names = redis.call('zrangebylex', keys, from, '+', 'LIMIT', 0, limit + 1)
else
  names = redis.call('zrangebylex', keys, from, '+')
end
if limit > 0 and #names > limit then
  names[limit + 1] = nil
  cursor = names[limit]
end
for _, name in ipairs(names) do
  local stored = redis.call('hget', state, name)
  if stored then
    found[#found + 1] = name
    found[#found + 1] = stored
  end
end
return {top, epoch, cursor, found}
"#
);

/// The stream of changes, as history reads a history stream.
///
/// KEYS: the six channel keys. ARGV: 1 since offset (`""`: from the start or end), 2 reverse
/// (`0`/`1`), 3 limit (-1 all, 0 none), 4 epoch the caller expects (`""`: any), 5 epoch to
/// start, 6 meta TTL ms.
/// Returns `{top, epoch, entries}` (entries as XRANGE gives them), or `{"unrecoverable"}`.
pub static MAP_READ_STREAM: LazyLock<Script> = map_script!(
    r#"
local epoch = ensure_epoch(ARGV[5])
if ARGV[4] ~= '' and ARGV[4] ~= epoch then return {'unrecoverable'} end
touch(ARGV[6])
local top = tonumber(redis.call('hget', meta, 's') or '0')
local limit = tonumber(ARGV[3])
if limit == 0 then return {top, epoch, {}} end
local entries
if ARGV[2] == '0' then
  local from = '-'
  if ARGV[1] ~= '' then from = '(' .. ARGV[1] .. '-0' end
  if limit > 0 then
    entries = redis.call('xrange', stream, from, '+', 'COUNT', limit)
  else
    entries = redis.call('xrange', stream, from, '+')
  end
else
  local to = '+'
  if ARGV[1] ~= '' then to = '(' .. ARGV[1] .. '-0' end
  if limit > 0 then
    entries = redis.call('xrevrange', stream, to, '-', 'COUNT', limit)
  else
    entries = redis.call('xrevrange', stream, to, '-')
  end
end
return {top, epoch, entries}
"#
);
