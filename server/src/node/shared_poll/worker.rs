//! A shared-poll channel's worker: timed refresh cycles over every key in the item index (in
//! key order, in batches of `refresh_batch_size` spread over the interval), immediate one-key
//! polls for keys a connection just started tracking, and applying the backend's answers.
//!
//! Applying an answer, as Centrifugo does: in versioned mode a new epoch first resets every
//! key and unsubscribes the trackers (2500); then each item either removes its key (pushed to
//! every tracker), or becomes a new version (versioned: the backend's, when newer; versionless:
//! the next synthetic version, when the data changed) pushed to trackers through their version
//! filters, or re-sends the current version to connections that may lack it. A failed call
//! changes nothing: the next cycle asks again.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Entry, PollChannel, PollState};
use crate::hub::{KeyedUpdate, Prepared};
use crate::node::Node;
use crate::proto::client::Publication;
use crate::proto::proxy::{SharedPollRefreshItem, SharedPollRefreshRequest, SharedPollRefreshResult};
use crate::proxy::{CallContext, HeaderSource};

/// Longest a refresh call may take whatever the proxy's own timeout.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) async fn run(node: Weak<Node>, poll: Arc<PollChannel>, mut notified: mpsc::Receiver<String>) {
    let interval = poll.options.effective_refresh_interval();
    let mut next_cycle = Instant::now() + interval;
    loop {
        let shutdown_at = {
            let state = poll.state.locked();
            state.idle_since.map(|since| since + poll.options.effective_shutdown_delay())
        };
        tokio::select! {
            _ = poll.stop.cancelled() => return,
            _ = tokio::time::sleep_until(next_cycle) => {
                let Some(node) = node.upgrade() else { return };
                let started = Instant::now();
                cycle(&node, &poll, interval).await;
                next_cycle = (next_cycle + interval).max(started + interval.saturating_sub(started.elapsed()));
            }
            Some(key) = notified.recv() => {
                let Some(node) = node.upgrade() else { return };
                if poll.state.locked().items.contains_key(&key) {
                    refresh(&node, &poll, vec![key]).await;
                }
            }
            _ = sleep_until_some(shutdown_at) => {
                let Some(node) = node.upgrade() else { return };
                if node.drop_poll_channel(&poll) {
                    return;
                }
            }
        }
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One timed cycle: every key not just published, sorted, in batches spread over the interval.
async fn cycle(node: &Arc<Node>, poll: &Arc<PollChannel>, interval: Duration) {
    let mut keys: Vec<String> = {
        let mut state = poll.state.locked();
        state
            .items
            .iter_mut()
            .filter_map(|(key, entry)| {
                let fresh = std::mem::take(&mut entry.fresh_from_publish);
                (!fresh).then(|| key.clone())
            })
            .collect()
    };
    if keys.is_empty() {
        return;
    }
    keys.sort_unstable();
    let batches: Vec<Vec<String>> =
        keys.chunks(poll.options.effective_batch_size()).map(<[String]>::to_vec).collect();
    let spread = interval / batches.len() as u32;
    let calls = batches.into_iter().enumerate().map(|(i, batch)| async move {
        tokio::time::sleep(spread * i as u32).await;
        refresh(node, poll, batch).await;
    });
    join_all(calls).await;
}

/// Asks the backend about `keys` and applies the answer.
async fn refresh(node: &Arc<Node>, poll: &Arc<PollChannel>, keys: Vec<String>) {
    let Ok(_permit) = node.shared_poll.permits.clone().acquire_owned().await else { return };
    let items = {
        let state = poll.state.locked();
        let versioned = poll.options.versioned();
        keys.into_iter()
            .map(|key| {
                let entry = state.items.get(&key).copied().unwrap_or_default();
                let version = if versioned && !entry.needs_broadcast { entry.version } else { 0 };
                SharedPollRefreshItem { key, version }
            })
            .collect()
    };
    let request = SharedPollRefreshRequest { channel: poll.name.clone(), items };
    let emulated = Default::default();
    let context = CallContext { headers: &[], source: HeaderSource::Http, emulated: &emulated };
    let answer = tokio::time::timeout(CALL_TIMEOUT, poll.backend.call(request, &context)).await;
    match answer {
        Ok(Ok(response)) if response.error.is_none() => {
            apply(node, poll, response.result.unwrap_or_default());
        }
        Ok(Ok(response)) => {
            let error = response.error.unwrap_or_default();
            tracing::warn!(channel = %poll.name, code = error.code, message = %error.message, "shared poll refresh answered an error");
        }
        Ok(Err(error)) => tracing::warn!(channel = %poll.name, %error, "shared poll refresh failed"),
        Err(_) => tracing::warn!(channel = %poll.name, "shared poll refresh timed out"),
    }
}

fn data_hash(data: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    data.hash(&mut hasher);
    hasher.finish()
}

/// A new epoch (versioned mode): everything known is void, and so is every tracker's state.
pub(super) fn flip_epoch(node: &Node, poll: &PollChannel, state: &mut PollState, epoch: String) {
    state.epoch = epoch;
    state.items.clear();
    state.idle_since = Some(Instant::now());
    node.unsubscribe_trackers(&poll.name);
}

/// Applies a refresh answer; pushes happen after the state lock is released.
fn apply(node: &Arc<Node>, poll: &Arc<PollChannel>, result: SharedPollRefreshResult) {
    let mut updates = Vec::new();
    let mut removals = Vec::new();
    {
        let mut state = poll.state.locked();
        if poll.options.versioned() && result.epoch != state.epoch {
            flip_epoch(node, poll, &mut state, result.epoch.clone());
        }
        for item in result.items {
            if item.removed {
                state.items.remove(&item.key);
                removals.push(item.key);
                continue;
            }
            if let Some(update) = apply_item(&mut state, poll, &item) {
                updates.push(update);
            }
        }
        if state.items.is_empty() && state.idle_since.is_none() {
            state.idle_since = Some(Instant::now());
        }
    }
    for (key, update) in updates {
        node.hub.broadcast_keyed(&poll.name, &key, &update);
    }
    for key in removals {
        let publication = Publication { key: key.clone(), removed: true, ..Default::default() };
        let update = KeyedUpdate {
            prepared: Arc::new(Prepared::publication(&poll.name, publication, "")),
            version: 0,
            base_version: 0,
            removed: true,
        };
        node.hub.broadcast_keyed(&poll.name, &key, &update);
        node.hub.keyed.drop_key(&poll.name, &key);
    }
}

/// One item of an answer against the key's entry: the update to push, if any.
fn apply_item(
    state: &mut PollState,
    poll: &PollChannel,
    item: &crate::proto::proxy::SharedPollRefreshResultItem,
) -> Option<(String, KeyedUpdate)> {
    let versionless = !poll.options.versioned() && item.version == 0;
    let counter = state.counter;
    let entry: &mut Entry = state.items.get_mut(&item.key)?;
    let (version, base) = if versionless {
        let hash = data_hash(&item.data);
        if entry.version == 0 || hash != entry.hash {
            entry.hash = hash;
            state.counter = counter + 1;
            (state.counter, None)
        } else if entry.needs_broadcast && entry.version > 0 {
            (entry.version, None)
        } else {
            return None;
        }
    } else if item.version > entry.version {
        let base = (!item.prev_data.is_empty() && entry.version > 0)
            .then(|| (item.prev_data.clone(), entry.version));
        (item.version, base)
    } else if entry.needs_broadcast && entry.version > 0 && item.version == entry.version {
        (entry.version, None)
    } else {
        return None;
    };
    let entry = state.items.get_mut(&item.key)?;
    (entry.version, entry.needs_broadcast) = (version, false);
    let publication =
        Publication { key: item.key.clone(), data: item.data.clone(), version, ..Default::default() };
    let base_version = base.as_ref().map_or(0, |(_, v)| *v);
    let prepared =
        Prepared::publication(&poll.name, publication, "").with_delta_base(base.map(|(data, _)| data));
    Some((
        item.key.clone(),
        KeyedUpdate { prepared: Arc::new(prepared), version, base_version, removed: false },
    ))
}
