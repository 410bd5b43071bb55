//! The node-local index of connections and subscriptions, the fan-out, and the shared side of
//! each session.
//!
//! Three sharded maps: channel → subscribers, user → connections, client id → connection.
//! A broadcast wraps the message once in a [`Prepared`], which encodes it at most once per
//! protocol on first use; every subscriber then gets a refcounted clone of the same bytes.
//!
//! A [`SessionHandle`] is what the hub (and the node, and the server API) hold of a session:
//! its bounded outbound queue ([`outbound`]), its per-channel delivery state and its control
//! queue. The session's own task owns everything else.
//!
//! **Invariant:** the hub never awaits a session. Delivery is a non-blocking push into each
//! session's bounded queue ([`SessionHandle::deliver`]); a full queue closes that session (3008)
//! instead of slowing the broadcast. Shard locks are [`crate::sync::RwLock`]s held only while
//! iterating; lock order is hub shard → session deliveries → session outbound queue.
//!
//! **Flushing.** Sessions whose transport can write directly are not woken per delivery: the
//! broadcast hands them to one of the hub's [`flusher`] tasks, which writes each one's queued
//! messages in a non-blocking syscall ([`SessionHandle::flush_deliveries`]).

mod channel_map;
mod emulation;
mod flusher;
mod handle;
mod keyed;
pub mod outbound;
mod prepared;

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

pub use channel_map::ChannelMap;
pub use emulation::{EmulationRegistration, EmulationSessions, Undelivered};
pub use handle::{Control, LiveDelivery, ServerSubscribe, SessionHandle};
pub use keyed::{KeyedIndex, KeyedUpdate};
pub use prepared::{Prepared, Variant};

use crate::common::StreamPosition;
use crate::sync::RwLock;
use flusher::Flusher;

// Two under the model checker: every lock is one more object for it to track.
pub(crate) const SHARDS: usize = if cfg!(feature = "loom") { 2 } else { 64 };

pub(crate) fn shard_of(key: &str) -> usize {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() as usize) % SHARDS
}

type Sessions = HashMap<u64, Arc<SessionHandle>>;

/// What adding (or removing) one subscriber changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// It was subscribed already (removing: it was not).
    Unchanged,
    /// It was added (removed); the channel has other local subscribers.
    Changed,
    /// It was the channel's first local subscriber added, or its last removed.
    ChannelEdge,
}

impl Membership {
    pub fn changed(self) -> bool {
        self != Membership::Unchanged
    }
}

/// Connection and subscription index with fan-out.
#[derive(Debug)]
pub struct Hub {
    channels: Vec<RwLock<HashMap<String, Sessions>>>,
    users: Vec<RwLock<HashMap<String, Sessions>>>,
    clients: Vec<RwLock<HashMap<String, Arc<SessionHandle>>>>,
    /// Connected sessions on this node (kept apart so limits are O(1) to check).
    connections: AtomicUsize,
    /// One per available core (sessions are spread over them by key, so every worker can
    /// write at once).
    flushers: Vec<Arc<Flusher>>,
    /// Shared-poll channels: who tracks which key.
    pub keyed: KeyedIndex,
}

impl Drop for Hub {
    fn drop(&mut self) {
        for flusher in &self.flushers {
            flusher.stop();
        }
    }
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Self {
        Self {
            channels: (0..SHARDS).map(|_| RwLock::default()).collect(),
            users: (0..SHARDS).map(|_| RwLock::default()).collect(),
            clients: (0..SHARDS).map(|_| RwLock::default()).collect(),
            connections: AtomicUsize::new(0),
            flushers: (0..std::thread::available_parallelism().map_or(1, usize::from))
                .map(|_| Arc::default())
                .collect(),
            keyed: KeyedIndex::default(),
        }
    }

    /// Test-only fault injection (S13): a panic while a client shard's lock is held.
    #[cfg(test)]
    pub(crate) fn panic_holding_a_lock(&self) {
        let _held = self.clients[0].write_locked();
        panic!("injected panic while holding a hub lock");
    }

    /// Runs every flusher's round now (the loom models play the flusher tasks on a thread).
    #[cfg(all(test, feature = "loom"))]
    pub(crate) fn flush_round(&self) {
        for flusher in &self.flushers {
            flusher.round();
        }
    }

    /// Registers a connected session.
    pub fn add_connection(&self, handle: &Arc<SessionHandle>) {
        self.users[shard_of(handle.user())]
            .write_locked()
            .entry(handle.user().to_owned())
            .or_default()
            .insert(handle.key, handle.clone());
        let previous = self.clients[shard_of(&handle.client)]
            .write_locked()
            .insert(handle.client.clone(), handle.clone());
        if previous.is_none() {
            self.connections.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn remove_connection(&self, handle: &SessionHandle) {
        let mut users = self.users[shard_of(handle.user())].write_locked();
        if let Some(sessions) = users.get_mut(handle.user()) {
            sessions.remove(&handle.key);
            if sessions.is_empty() {
                users.remove(handle.user());
            }
        }
        drop(users);
        let removed = self.clients[shard_of(&handle.client)].write_locked().remove(&handle.client);
        if removed.is_some() {
            self.connections.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Number of connected sessions on this node.
    pub fn num_connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Connections of one user on this node.
    pub fn user_connections(&self, user: &str) -> Vec<Arc<SessionHandle>> {
        self.users[shard_of(user)]
            .read_locked()
            .get(user)
            .map(|sessions| sessions.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn client(&self, client: &str) -> Option<Arc<SessionHandle>> {
        self.clients[shard_of(client)].read_locked().get(client).cloned()
    }

    /// Every connection on this node (for shutdown).
    pub fn all_connections(&self) -> Vec<Arc<SessionHandle>> {
        self.clients
            .iter()
            .flat_map(|shard| shard.read_locked().values().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// Adds a subscriber; changed when it was not subscribed already (the broker then needs
    /// one more reference to the channel).
    pub fn add_subscriber(&self, channel: &str, handle: &Arc<SessionHandle>) -> Membership {
        let mut shard = self.channels[shard_of(channel)].write_locked();
        let subscribers = shard.entry(channel.to_owned()).or_default();
        match subscribers.insert(handle.key, handle.clone()) {
            Some(_) => Membership::Unchanged,
            None if subscribers.len() == 1 => Membership::ChannelEdge,
            None => Membership::Changed,
        }
    }

    /// Removes a subscriber; changed when it was subscribed (the broker then drops one
    /// reference).
    pub fn remove_subscriber(&self, channel: &str, handle: &SessionHandle) -> Membership {
        let mut shard = self.channels[shard_of(channel)].write_locked();
        let Some(subscribers) = shard.get_mut(channel) else { return Membership::Unchanged };
        if subscribers.remove(&handle.key).is_none() {
            return Membership::Unchanged;
        }
        if subscribers.is_empty() {
            shard.remove(channel);
            return Membership::ChannelEdge;
        }
        Membership::Changed
    }

    /// Tells every subscriber of `channel` the stream's current top, so positioned
    /// subscriptions that fell behind it (a lost delivery) resubscribe and recover.
    pub fn check_position(&self, channel: &str, top: &StreamPosition) {
        let shard = self.channels[shard_of(channel)].read_locked();
        let Some(subscribers) = shard.get(channel) else { return };
        for handle in subscribers.values() {
            handle.check_position(channel, top);
        }
    }

    /// Fans `prepared` out to the channel's subscribers on this node; false when it has none.
    pub fn broadcast(&self, channel: &str, prepared: Prepared) -> bool {
        let prepared = Arc::new(prepared);
        let mut owed: Vec<Vec<Arc<SessionHandle>>> = vec![Vec::new(); self.flushers.len()];
        {
            let shard = self.channels[shard_of(channel)].read_locked();
            let Some(subscribers) = shard.get(channel) else { return false };
            for handle in subscribers.values() {
                if handle.deliver(channel, &prepared) {
                    let flusher = handle.key as usize % owed.len();
                    owed[flusher].push(handle.clone());
                }
            }
        }
        for (flusher, sessions) in self.flushers.iter().zip(owed.iter_mut()) {
            flusher.hand_over(sessions);
        }
        true
    }

    /// Delivers a keyed update to the trackers of `key` (each through its version filter).
    pub fn broadcast_keyed(&self, channel: &str, key: &str, update: &KeyedUpdate) {
        let mut owed: Vec<Vec<Arc<SessionHandle>>> = vec![Vec::new(); self.flushers.len()];
        for handle in self.keyed.deliver(channel, key, update) {
            let flusher = handle.key as usize % owed.len();
            owed[flusher].push(handle);
        }
        for (flusher, sessions) in self.flushers.iter().zip(owed.iter_mut()) {
            flusher.hand_over(sessions);
        }
    }

    /// Channels with local subscribers and their subscriber counts.
    pub fn channels(&self) -> BTreeMap<String, u32> {
        let mut out = BTreeMap::new();
        for shard in &self.channels {
            for (channel, subscribers) in shard.read_locked().iter() {
                out.insert(channel.clone(), subscribers.len() as u32);
            }
        }
        out
    }

    /// Bytes queued for the connected sessions, not yet written.
    pub fn outbound_bytes(&self) -> u64 {
        let shards = self.clients.iter().map(|shard| {
            shard.read_locked().values().map(|handle| handle.outbound.pending_bytes() as u64).sum::<u64>()
        });
        shards.sum()
    }

    /// Counts for the `info` API: (clients, users, channels, subscriptions).
    pub fn stats(&self) -> (u32, u32, u32, u32) {
        let clients: usize = self.clients.iter().map(|s| s.read_locked().len()).sum();
        let users: usize = self.users.iter().map(|s| s.read_locked().len()).sum();
        let (channels, subs) = self.channels.iter().fold((0, 0), |(c, s), shard| {
            let shard = shard.read_locked();
            (c + shard.len(), s + shard.values().map(HashMap::len).sum::<usize>())
        });
        (clients as u32, users as u32, channels as u32, subs as u32)
    }
}
