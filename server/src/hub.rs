//! The node-local index of connections and subscriptions, and the fan-out.
//!
//! Three sharded maps: channel → subscribers, user → connections, client id → connection.
//! A broadcast wraps the message once in a [`Prepared`], which encodes it at most once per
//! protocol on first use; every subscriber then gets a refcounted clone of the same bytes.
//!
//! **Invariant:** the hub never awaits a session. Delivery is a non-blocking push into each
//! session's bounded queue ([`SessionHandle::deliver`]); a full queue closes that session (3008)
//! instead of slowing the broadcast. Shard locks are `std::sync::RwLock`s held only while
//! iterating; lock order is hub shard → session deliveries → session outbound queue.
//!
//! **Flushing.** Sessions whose transport can write directly (WebSocket over plain TCP) are not
//! woken per delivery: the broadcast hands them to one of the hub's flusher tasks, which writes
//! each one's queued messages in a non-blocking syscall ([`SessionHandle::flush_deliveries`]).
//! One task polling through 10k sockets is far cheaper than 10k tasks woken once each, and
//! because the flusher runs only after the publishing task yields, the publications of one
//! burst still go out together in one frame per connection.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use bytes::Bytes;

use crate::proto::client::{ClientInfo, Join, Leave, Publication, Push, Reply};
use crate::protocol::{self, EncodeError, ProtocolType};
use crate::session::SessionHandle;

const SHARDS: usize = 64;
/// Sessions a flusher writes before it yields to other tasks.
const FLUSH_SLICE: usize = 128;

fn shard_of(key: &str) -> usize {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() as usize) % SHARDS
}

#[derive(Debug)]
enum PreparedKind {
    Publication { offset: u64, epoch: String },
    JoinLeave,
}

/// A push to many subscribers, encoded lazily and at most once per protocol.
#[derive(Debug)]
pub struct Prepared {
    reply: Reply,
    kind: PreparedKind,
    encoded: [OnceLock<Result<Bytes, EncodeError>>; ProtocolType::COUNT],
}

impl Prepared {
    /// A publication push; `epoch` is attached to the wire message only for offset 1, as
    /// Centrifugo does (clients learn epochs from subscribe and history results).
    pub fn publication(channel: &str, mut publication: Publication, epoch: &str) -> Self {
        publication.time = 0;
        if publication.offset == 1 {
            publication.epoch = epoch.to_owned();
        }
        // Offset 0 (no history) reads as "no position" in `position()`.
        let kind = PreparedKind::Publication { offset: publication.offset, epoch: epoch.to_owned() };
        Self::new(Push { channel: channel.to_owned(), r#pub: Some(publication), ..Default::default() }, kind)
    }

    pub fn join(channel: &str, info: ClientInfo) -> Self {
        Self::new(
            Push { channel: channel.to_owned(), join: Some(Join { info: Some(info) }), ..Default::default() },
            PreparedKind::JoinLeave,
        )
    }

    pub fn leave(channel: &str, info: ClientInfo) -> Self {
        Self::new(
            Push {
                channel: channel.to_owned(),
                leave: Some(Leave { info: Some(info) }),
                ..Default::default()
            },
            PreparedKind::JoinLeave,
        )
    }

    fn new(push: Push, kind: PreparedKind) -> Self {
        Self { reply: Reply { push: Some(push), ..Default::default() }, kind, encoded: Default::default() }
    }

    /// Stream position of a publication with history, else `None`.
    pub fn position(&self) -> Option<(u64, &str)> {
        match &self.kind {
            PreparedKind::Publication { offset, epoch } if *offset > 0 => Some((*offset, epoch)),
            _ => None,
        }
    }

    /// Tags of a publication push (for per-subscriber tags filters).
    pub fn publication_tags(&self) -> Option<&BTreeMap<String, String>> {
        self.reply.push.as_ref()?.r#pub.as_ref().map(|p| &p.tags)
    }

    pub fn is_join_leave(&self) -> bool {
        matches!(self.kind, PreparedKind::JoinLeave)
    }

    /// The encoded reply for `protocol`, computed on first use.
    pub fn encoded(&self, protocol: ProtocolType) -> Result<Bytes, EncodeError> {
        self.encoded[protocol.index()].get_or_init(|| protocol::encode_reply(protocol, &self.reply)).clone()
    }
}

type Sessions = HashMap<u64, Arc<SessionHandle>>;

/// Sessions owed a direct flush, and the task that flushes them.
#[derive(Debug, Default)]
struct Flusher {
    owed: Mutex<Vec<Arc<SessionHandle>>>,
    wake: tokio::sync::Notify,
    started: AtomicBool,
    stopped: AtomicBool,
}

impl Flusher {
    /// Queues sessions for flushing; starts the task on first use (inside the runtime).
    fn hand_over(self: &Arc<Self>, sessions: &mut Vec<Arc<SessionHandle>>) {
        if sessions.is_empty() {
            return;
        }
        self.owed.lock().expect("flusher lock poisoned").append(sessions);
        if !self.started.swap(true, Ordering::AcqRel) {
            let flusher = self.clone();
            tokio::spawn(async move { flusher.run().await });
        }
        self.wake.notify_one();
    }

    async fn run(self: Arc<Self>) {
        // Swapped with `owed` so the vector's allocation is reused between rounds.
        let mut round = Vec::new();
        while !self.stopped.load(Ordering::Acquire) {
            std::mem::swap(&mut round, &mut *self.owed.lock().expect("flusher lock poisoned"));
            if round.is_empty() {
                self.wake.notified().await;
                continue;
            }
            for (i, session) in round.iter().enumerate() {
                session.flush_deliveries();
                // A round over a big channel is thousands of syscalls: yield now and then so
                // the other tasks on this worker (publishers, sessions, timers) keep running.
                if (i + 1) % FLUSH_SLICE == 0 {
                    tokio::task::yield_now().await;
                }
            }
            round.clear();
            tokio::task::yield_now().await;
        }
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
}

impl Drop for Hub {
    fn drop(&mut self) {
        for flusher in &self.flushers {
            flusher.stopped.store(true, Ordering::Release);
            flusher.wake.notify_one();
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
        }
    }

    /// Registers a connected session.
    pub fn add_connection(&self, handle: &Arc<SessionHandle>) {
        self.users[shard_of(handle.user())]
            .write()
            .expect("hub lock poisoned")
            .entry(handle.user().to_owned())
            .or_default()
            .insert(handle.key, handle.clone());
        let previous = self.clients[shard_of(&handle.client)]
            .write()
            .expect("hub lock poisoned")
            .insert(handle.client.clone(), handle.clone());
        if previous.is_none() {
            self.connections.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn remove_connection(&self, handle: &SessionHandle) {
        let mut users = self.users[shard_of(handle.user())].write().expect("hub lock poisoned");
        if let Some(sessions) = users.get_mut(handle.user()) {
            sessions.remove(&handle.key);
            if sessions.is_empty() {
                users.remove(handle.user());
            }
        }
        drop(users);
        let removed =
            self.clients[shard_of(&handle.client)].write().expect("hub lock poisoned").remove(&handle.client);
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
            .read()
            .expect("hub lock poisoned")
            .get(user)
            .map(|sessions| sessions.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn client(&self, client: &str) -> Option<Arc<SessionHandle>> {
        self.clients[shard_of(client)].read().expect("hub lock poisoned").get(client).cloned()
    }

    /// Every connection on this node (for shutdown).
    pub fn all_connections(&self) -> Vec<Arc<SessionHandle>> {
        self.clients
            .iter()
            .flat_map(|shard| shard.read().expect("hub lock poisoned").values().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// Adds a subscriber; true when it was not subscribed already (the broker then needs one
    /// more reference to the channel).
    pub fn add_subscriber(&self, channel: &str, handle: &Arc<SessionHandle>) -> bool {
        let mut shard = self.channels[shard_of(channel)].write().expect("hub lock poisoned");
        shard.entry(channel.to_owned()).or_default().insert(handle.key, handle.clone()).is_none()
    }

    /// Removes a subscriber; true when it was subscribed (the broker then drops one reference).
    pub fn remove_subscriber(&self, channel: &str, handle: &SessionHandle) -> bool {
        let mut shard = self.channels[shard_of(channel)].write().expect("hub lock poisoned");
        let Some(subscribers) = shard.get_mut(channel) else { return false };
        if subscribers.remove(&handle.key).is_none() {
            return false;
        }
        if subscribers.is_empty() {
            shard.remove(channel);
        }
        true
    }

    /// Tells every subscriber of `channel` the stream's current top, so positioned
    /// subscriptions that fell behind it (a lost delivery) resubscribe and recover.
    pub fn check_position(&self, channel: &str, top: &crate::engine::StreamPosition) {
        let shard = self.channels[shard_of(channel)].read().expect("hub lock poisoned");
        let Some(subscribers) = shard.get(channel) else { return };
        for handle in subscribers.values() {
            handle.check_position(channel, top);
        }
    }

    /// Fans `prepared` out to the channel's subscribers on this node.
    pub fn broadcast(&self, channel: &str, prepared: Prepared) {
        let prepared = Arc::new(prepared);
        let mut owed: Vec<Vec<Arc<SessionHandle>>> = vec![Vec::new(); self.flushers.len()];
        {
            let shard = self.channels[shard_of(channel)].read().expect("hub lock poisoned");
            let Some(subscribers) = shard.get(channel) else { return };
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
    }

    /// Channels with local subscribers and their subscriber counts.
    pub fn channels(&self) -> BTreeMap<String, u32> {
        let mut out = BTreeMap::new();
        for shard in &self.channels {
            for (channel, subscribers) in shard.read().expect("hub lock poisoned").iter() {
                out.insert(channel.clone(), subscribers.len() as u32);
            }
        }
        out
    }

    /// Counts for the `info` API: (clients, users, channels, subscriptions).
    pub fn stats(&self) -> (u32, u32, u32, u32) {
        let clients: usize = self.clients.iter().map(|s| s.read().expect("hub lock poisoned").len()).sum();
        let users: usize = self.users.iter().map(|s| s.read().expect("hub lock poisoned").len()).sum();
        let (channels, subs) = self.channels.iter().fold((0, 0), |(c, s), shard| {
            let shard = shard.read().expect("hub lock poisoned");
            (c + shard.len(), s + shard.values().map(HashMap::len).sum::<usize>())
        });
        (clients as u32, users as u32, channels as u32, subs as u32)
    }
}
