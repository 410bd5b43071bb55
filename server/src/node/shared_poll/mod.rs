//! Shared-poll channels on this node: the union of the keys its connections track in each
//! channel (the *item index*), refreshed from the application backend's shared-poll refresh
//! proxy once for all of them, and the updates fanned out to each key's trackers through the
//! hub's keyed index, where every connection's version filter decides what it still needs.
//!
//! A channel's state lives while some connection here tracks one of its keys, plus
//! `channel_shutdown_delay`; its worker task (`worker.rs`) runs the timed refresh cycles and the
//! immediate polls of newly tracked keys, one call at a time per channel and at most
//! `shared_poll.concurrency_limit` calls on the node. Each node polls for its own connections;
//! `shared_poll_publish` reaches the other nodes through the broker, on one channel per key.

mod worker;

use crate::sync::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Node;
use crate::channel::ResolvedChannel;
use crate::config::{ProxyKind, SharedPollOptions};
use crate::engine::PublishOptions;
use crate::errors::ClientError;
use crate::hub::{Control, KeyedUpdate, Prepared, SessionHandle};
use crate::proto::client::Publication;
use crate::proxy::Backend;

/// Keys queued for an immediate poll, per channel; more are dropped (the timed cycle catches up).
const NOTIFY_QUEUE: usize = 4096;

/// One key's state on this node.
#[derive(Debug, Default, Clone, Copy)]
struct Entry {
    version: u64,
    /// Hash of the last data (versionless mode).
    hash: u64,
    /// A connection that may lack the current data tracked it: send the current version again.
    needs_broadcast: bool,
    /// Just set by a publish: the next timed cycle skips it once.
    fresh_from_publish: bool,
}

#[derive(Debug, Default)]
struct PollState {
    items: HashMap<String, Entry>,
    /// Versionless: random per channel state; versioned: the backend's or publisher's.
    epoch: String,
    /// Versionless: the last synthetic version given out.
    counter: u64,
    /// The item index emptied then: the channel is dropped after `channel_shutdown_delay`.
    idle_since: Option<Instant>,
}

/// One shared-poll channel with its worker.
#[derive(Debug)]
struct PollChannel {
    name: String,
    options: SharedPollOptions,
    backend: Arc<Backend>,
    state: Mutex<PollState>,
    notify: mpsc::Sender<String>,
    stop: CancellationToken,
}

/// Every shared-poll channel this node polls.
#[derive(Debug)]
pub struct SharedPoll {
    channels: Mutex<HashMap<String, Arc<PollChannel>>>,
    permits: Arc<Semaphore>,
    /// The epoch a versionless channel shows before it has state on this node.
    node_epoch: String,
}

impl SharedPoll {
    pub fn new(concurrency: usize) -> Self {
        Self {
            channels: Mutex::default(),
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            node_epoch: crate::engine::memory::new_epoch(),
        }
    }

    fn channel(&self, name: &str) -> Option<Arc<PollChannel>> {
        self.channels.locked().get(name).cloned()
    }
}

/// A key's broker channel: `<byte length of channel>:<channel><key>` (Centrifugo's naming).
pub fn key_channel(channel: &str, key: &str) -> String {
    format!("{}:{channel}{key}", channel.len())
}

/// The (channel, key) a key channel names, if it is one.
pub fn parse_key_channel(name: &str) -> Option<(&str, &str)> {
    let (length, rest) = name.split_once(':')?;
    let length: usize = length.parse().ok()?;
    let channel = rest.get(..length)?;
    Some((channel, &rest[length..]))
}

impl Node {
    /// The epoch a subscribe reply carries (see [`PollState::epoch`]).
    pub fn shared_poll_epoch(&self, channel: &str, versioned: bool) -> String {
        match self.shared_poll.channel(channel) {
            Some(poll) => poll.state.locked().epoch.clone(),
            None if versioned => String::new(),
            None => self.shared_poll.node_epoch.clone(),
        }
    }

    /// Adds keys a connection starts tracking (with the versions it holds) to the channel's
    /// item index, subscribing their broker channels when publishing is on; returns the keys to
    /// poll at once: keys new here, and keys the connection holds an older version of. The
    /// connection joins the fan-out afterwards ([`Self::shared_poll_activate`]), once its reply
    /// is queued.
    pub async fn shared_poll_register(
        self: &Arc<Self>,
        channel: &str,
        resolved: &ResolvedChannel,
        items: &[(String, u64)],
    ) -> Result<Vec<String>, ClientError> {
        let poll = self.poll_channel(channel, &resolved.options.shared_poll)?;
        let mut to_poll = Vec::new();
        let mut new_keys = Vec::new();
        {
            let mut state = poll.state.locked();
            state.idle_since = None;
            for (key, client_version) in items {
                match state.items.get_mut(key) {
                    None => {
                        state.items.insert(key.clone(), Entry::default());
                        new_keys.push(key.clone());
                        if *client_version == 0 {
                            to_poll.push(key.clone());
                        }
                    }
                    Some(entry) if *client_version == 0 || entry.version > *client_version => {
                        let first_notice = !entry.needs_broadcast;
                        entry.needs_broadcast = true;
                        if first_notice && entry.version > 0 {
                            to_poll.push(key.clone());
                        }
                    }
                    Some(_) => {}
                }
            }
        }
        if poll.options.publish_enabled {
            self.subscribe_key_channels(channel, &new_keys).await?;
        }
        Ok(to_poll)
    }

    /// Puts a connection's newly tracked keys into the fan-out and polls `to_poll` now.
    pub fn shared_poll_activate(
        &self,
        channel: &str,
        handle: &Arc<SessionHandle>,
        keys: &[String],
        to_poll: Vec<String>,
    ) {
        for key in keys {
            self.hub.keyed.track(channel, key, handle);
        }
        let Some(poll) = self.shared_poll.channel(channel) else { return };
        for key in to_poll {
            // A full queue drops the poll; the next timed cycle covers the key.
            let _ = poll.notify.try_send(key);
        }
    }

    async fn subscribe_key_channels(&self, channel: &str, keys: &[String]) -> Result<(), ClientError> {
        for key in keys {
            if let Err(error) = self.broker.subscribe(&key_channel(channel, key)).await {
                tracing::warn!(%channel, %key, %error, "shared poll key subscription failed");
                return Err(ClientError::INTERNAL);
            }
        }
        Ok(())
    }

    /// Removes a connection's keys; keys nobody here tracks any more leave the item index.
    pub fn shared_poll_untrack(self: &Arc<Self>, channel: &str, handle: &SessionHandle, keys: &[String]) {
        let abandoned: Vec<&String> =
            keys.iter().filter(|key| self.hub.keyed.untrack(channel, key, handle)).collect();
        let Some(poll) = self.shared_poll.channel(channel) else { return };
        let mut state = poll.state.locked();
        for key in &abandoned {
            state.items.remove(key.as_str());
        }
        if state.items.is_empty() && state.idle_since.is_none() {
            state.idle_since = Some(Instant::now());
        }
        drop(state);
        if poll.options.publish_enabled {
            self.unsubscribe_key_channels(channel, abandoned.into_iter().cloned().collect());
        }
    }

    fn unsubscribe_key_channels(self: &Arc<Self>, channel: &str, keys: Vec<String>) {
        if keys.is_empty() {
            return;
        }
        let (node, channel) = (self.clone(), channel.to_owned());
        tokio::spawn(async move {
            for key in keys {
                if let Err(error) = node.broker.unsubscribe(&key_channel(&channel, &key)).await {
                    tracing::warn!(%channel, %key, %error, "shared poll key unsubscribe failed");
                }
            }
        });
    }

    /// The channel's state, created with its worker on first use.
    fn poll_channel(
        self: &Arc<Self>,
        channel: &str,
        options: &SharedPollOptions,
    ) -> Result<Arc<PollChannel>, ClientError> {
        let mut channels = self.shared_poll.channels.locked();
        if let Some(poll) = channels.get(channel) {
            return Ok(poll.clone());
        }
        let backend = self
            .proxies
            .get(ProxyKind::SharedPollRefresh, options.effective_proxy_name())
            .cloned()
            .ok_or(ClientError::NOT_AVAILABLE)?;
        let (notify, notified) = mpsc::channel(NOTIFY_QUEUE);
        let epoch = if options.versioned() { String::new() } else { crate::engine::memory::new_epoch() };
        let poll = Arc::new(PollChannel {
            name: channel.to_owned(),
            options: options.clone(),
            backend,
            state: Mutex::new(PollState { epoch, ..Default::default() }),
            notify,
            stop: CancellationToken::new(),
        });
        channels.insert(channel.to_owned(), poll.clone());
        tokio::spawn(worker::run(Arc::downgrade(self), poll.clone(), notified));
        Ok(poll)
    }

    /// Forgets a channel nobody here tracks (called by its worker once the delay passed).
    fn drop_poll_channel(self: &Arc<Self>, poll: &Arc<PollChannel>) -> bool {
        let mut channels = self.shared_poll.channels.locked();
        let state = poll.state.locked();
        let delay = poll.options.effective_shutdown_delay();
        let due = state.items.is_empty() && state.idle_since.is_some_and(|since| since.elapsed() >= delay);
        if due && channels.get(&poll.name).is_some_and(|current| Arc::ptr_eq(current, poll)) {
            channels.remove(&poll.name);
            poll.stop.cancel();
        }
        due
    }

    /// `shared_poll_publish`: a new version of one key, to every node that polls the channel
    /// (through the broker, on the key's own channel).
    pub async fn shared_poll_publish(
        &self,
        channel: &str,
        publication: Publication,
    ) -> Result<(), ClientError> {
        let key_channel = key_channel(channel, &publication.key);
        self.broker
            .publish(&key_channel, publication, &PublishOptions::default())
            .await
            .map_err(super::engine_error)?;
        Ok(())
    }

    /// A publication that arrived on a key channel: applied if this node polls the channel
    /// and the version is newer than what it has.
    pub(super) fn apply_shared_poll_publication(self: &Arc<Self>, channel: &str, publication: Publication) {
        let Some(poll) = self.shared_poll.channel(channel) else { return };
        let mut state = poll.state.locked();
        if poll.options.versioned() && publication.epoch != state.epoch {
            worker::flip_epoch(self, &poll, &mut state, publication.epoch.clone());
        }
        let Some(entry) = state.items.get_mut(&publication.key) else { return };
        if publication.version <= entry.version {
            return;
        }
        (entry.version, entry.fresh_from_publish, entry.needs_broadcast) = (publication.version, true, false);
        drop(state);
        let key = publication.key.clone();
        let update = KeyedUpdate {
            version: publication.version,
            base_version: 0,
            removed: false,
            prepared: Arc::new(Prepared::publication(channel, publication, "")),
        };
        self.hub.broadcast_keyed(channel, &key, &update);
    }

    /// Tells every connection tracking keys of the channel that its state is gone (2500): after
    /// an epoch change their versions mean nothing. Their keys leave the fan-out at once.
    fn unsubscribe_trackers(&self, channel: &str) {
        for handle in self.hub.keyed.channel_trackers(channel) {
            for key in handle.untrack_keys(channel, &handle.tracked_keys(channel)) {
                self.hub.keyed.untrack(channel, &key, &handle);
            }
            handle.control(Control::InsufficientState { channel: channel.to_owned() });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_channels_round_trip() {
        let name = key_channel("poll:votes", "42");
        assert_eq!(name, "10:poll:votes42");
        assert_eq!(parse_key_channel(&name), Some(("poll:votes", "42")));
        assert_eq!(parse_key_channel(&key_channel("é:1", "k:2")), Some(("é:1", "k:2")));
        for bad in ["", "x:y", "99:short", "poll:votes"] {
            assert_eq!(parse_key_channel(bad), None, "{bad}");
        }
    }
}
