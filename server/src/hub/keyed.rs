//! The fan-out index of shared-poll channels: channel → key → the connections on this node
//! tracking that key. A connection tracking a key is not a channel subscriber: an update of a
//! key reaches only its trackers, each through its own version filter
//! ([`SessionHandle::deliver_keyed`]).

use std::collections::HashMap;
use std::sync::Arc;

use super::{Prepared, SHARDS, SessionHandle, Sessions, shard_of};
use crate::sync::RwLock;

type Trackers = HashMap<String, Sessions>;

/// See the module docs.
#[derive(Debug)]
pub struct KeyedIndex {
    shards: Vec<RwLock<HashMap<String, Trackers>>>,
}

impl Default for KeyedIndex {
    fn default() -> Self {
        Self { shards: (0..SHARDS).map(|_| RwLock::default()).collect() }
    }
}

/// One keyed publication on its way to a key's trackers.
#[derive(Debug)]
pub struct KeyedUpdate {
    pub prepared: Arc<Prepared>,
    pub version: u64,
    /// The version a delta patch in `prepared` applies to (0: none).
    pub base_version: u64,
    pub removed: bool,
}

impl KeyedIndex {
    /// Adds a tracker; true when it is the key's first on this node.
    pub fn track(&self, channel: &str, key: &str, handle: &Arc<SessionHandle>) -> bool {
        let mut shard = self.shards[shard_of(channel)].write_locked();
        let trackers = shard.entry(channel.to_owned()).or_default().entry(key.to_owned()).or_default();
        let first = trackers.is_empty();
        trackers.insert(handle.key, handle.clone());
        first
    }

    /// Removes a tracker; true when the key has none left on this node.
    pub fn untrack(&self, channel: &str, key: &str, handle: &SessionHandle) -> bool {
        let mut shard = self.shards[shard_of(channel)].write_locked();
        let Some(keys) = shard.get_mut(channel) else { return true };
        let Some(trackers) = keys.get_mut(key) else { return true };
        trackers.remove(&handle.key);
        let last = trackers.is_empty();
        if last {
            keys.remove(key);
            if keys.is_empty() {
                shard.remove(channel);
            }
        }
        last
    }

    /// Forgets a key and its trackers (a removal reached them all).
    pub fn drop_key(&self, channel: &str, key: &str) {
        let mut shard = self.shards[shard_of(channel)].write_locked();
        if let Some(keys) = shard.get_mut(channel) {
            keys.remove(key);
            if keys.is_empty() {
                shard.remove(channel);
            }
        }
    }

    /// Every connection tracking some key of `channel`.
    pub fn channel_trackers(&self, channel: &str) -> Vec<Arc<SessionHandle>> {
        let shard = self.shards[shard_of(channel)].read_locked();
        let mut all: Sessions = HashMap::new();
        for trackers in shard.get(channel).into_iter().flat_map(HashMap::values) {
            all.extend(trackers.iter().map(|(k, h)| (*k, h.clone())));
        }
        all.into_values().collect()
    }

    /// The trackers of one key (to flush after delivering to them).
    pub fn deliver(&self, channel: &str, key: &str, update: &KeyedUpdate) -> Vec<Arc<SessionHandle>> {
        let shard = self.shards[shard_of(channel)].read_locked();
        let Some(trackers) = shard.get(channel).and_then(|keys| keys.get(key)) else { return Vec::new() };
        trackers.values().filter(|handle| handle.deliver_keyed(channel, key, update)).cloned().collect()
    }
}
