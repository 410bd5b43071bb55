//! The NATS broker (`broker.type: nats`): PUB/SUB between nodes over a NATS server, nothing
//! else. As in Centrifugo, NATS keeps no history: publishing with history options, history
//! reads and recovery answer "not available" (108); presence lives in the presence manager
//! (memory, or Redis through `presence_manager`). Delivery is at most once.
//!
//! Subjects are Centrifugo's: `<prefix>.client.<channel>` carries a Protobuf `Push` with the
//! publication, join or leave; `<prefix>.control` and `<prefix>.node.<uid>` carry node control
//! messages. A channel that is not a valid literal subject (`*`, `>`, whitespace, an empty
//! token) is refused with 107 rather than turned into a wildcard.
//!
//! async-nats owns the connection: it reconnects (here after 50 ms, doubling to 1 s) and
//! restores subscriptions itself. While it is disconnected a publish fails at once with 100
//! instead of waiting in the client's buffer.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::connection::State;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use prost::Message;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{
    Broker, BrokerEventHandler, EngineError, HistoryFilter, HistoryResult, PublishOptions, PublishOutcome,
    StreamPosition,
};
use crate::config::NatsBroker as NatsSection;
use crate::proto::client::{ClientInfo, Join, Leave, Publication, Push};

type HandlerSlot = Arc<OnceLock<Arc<dyn BrokerEventHandler>>>;

/// One channel's NATS subscription: the task reading it, and how many local users it has.
struct ChannelSubscription {
    refs: usize,
    reader: JoinHandle<()>,
}

/// PUB/SUB over NATS.
pub struct NatsBroker {
    client: Arc<tokio::sync::OnceCell<async_nats::Client>>,
    prefix: String,
    timeout: Duration,
    handler: HandlerSlot,
    channels: tokio::sync::Mutex<HashMap<String, ChannelSubscription>>,
    stop: CancellationToken,
}

impl std::fmt::Debug for NatsBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBroker").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl Drop for NatsBroker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn failure(what: &str, error: impl std::fmt::Display) -> EngineError {
    EngineError::Internal(format!("nats {what}: {error}"))
}

/// A channel name that NATS can carry as one literal subject suffix.
fn valid_subject_part(channel: &str) -> bool {
    !channel.is_empty()
        && !channel.contains(['*', '>', ' ', '\t', '\r', '\n'])
        && channel.split('.').all(|token| !token.is_empty())
}

impl NatsBroker {
    /// Starts connecting in the background (retrying until the server answers), so a node
    /// comes up even while NATS is down. `uid` is this node's id for its control subject.
    pub fn new(section: &NatsSection, uid: &str) -> Result<Arc<Self>, String> {
        if section.url.is_empty() {
            return Err("broker.nats.url: required".into());
        }
        let prefix = section.prefix.clone();
        let timeout =
            if section.write_timeout.0.is_zero() { Duration::from_secs(1) } else { section.write_timeout.0 };
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("spinwire {uid}"))
            .connection_timeout(if section.dial_timeout.0.is_zero() {
                timeout
            } else {
                section.dial_timeout.0
            })
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis(50u64.saturating_mul(1 << attempts.min(5))).min(Duration::from_secs(1))
            })
            .retry_on_initial_connect()
            .ping_interval(Duration::from_secs(5));
        if section.tls.enabled {
            options = options.require_tls(true);
            if !section.tls.server_ca_pem.is_empty() {
                options = options.add_root_certificates(section.tls.server_ca_pem.clone().into());
            }
            if !section.tls.cert_pem.is_empty() {
                options = options.add_client_certificate(
                    section.tls.cert_pem.clone().into(),
                    section.tls.key_pem.clone().into(),
                );
            }
        }
        let broker = Arc::new(Self {
            client: Arc::default(),
            prefix: prefix.clone(),
            timeout,
            handler: Arc::default(),
            channels: tokio::sync::Mutex::default(),
            stop: CancellationToken::new(),
        });
        let url = section.url.clone();
        let (client_cell, handler, stop) =
            (broker.client.clone(), broker.handler.clone(), broker.stop.clone());
        let control = [format!("{prefix}.control"), format!("{prefix}.node.{uid}")];
        tokio::spawn(async move {
            let connect = options.connect(url.as_str());
            let client = tokio::select! {
                _ = stop.cancelled() => return,
                client = connect => client,
            };
            let client = match client {
                Ok(client) => client,
                Err(error) => {
                    tracing::error!(%error, %url, "nats: invalid connection settings");
                    return;
                }
            };
            let _ = client_cell.set(client.clone());
            for subject in control {
                match client.subscribe(subject.clone()).await {
                    Ok(subscriber) => {
                        tokio::spawn(read_control(subscriber, handler.clone(), stop.clone()));
                    }
                    Err(error) => tracing::error!(%error, %subject, "nats: control subscription failed"),
                }
            }
        });
        Ok(broker)
    }

    fn subject(&self, channel: &str) -> String {
        format!("{}.client.{channel}", self.prefix)
    }

    /// The client, if connected now; otherwise fail at once (never queue while NATS is away).
    fn live_client(&self) -> Result<async_nats::Client, EngineError> {
        let client = self.client.get().ok_or_else(|| failure("client", "not connected yet"))?;
        if client.connection_state() != State::Connected {
            return Err(failure("client", "disconnected"));
        }
        Ok(client.clone())
    }

    async fn publish_push(&self, channel: &str, push: Push) -> Result<(), EngineError> {
        if !valid_subject_part(channel) {
            return Err(EngineError::InvalidChannel);
        }
        let client = self.live_client()?;
        let payload = Bytes::from(push.encode_to_vec());
        let subject = self.subject(channel);
        tokio::time::timeout(self.timeout, client.publish(subject, payload))
            .await
            .map_err(|_| failure("publish", "timed out"))?
            .map_err(|e| failure("publish", e))
    }
}

/// Returns once the server has processed every command this connection sent before. NATS
/// handles one connection's commands in order, so a message to a fresh inbox this connection
/// subscribed to comes back only after them. (A flush only writes: without this, another
/// node's publication right after `subscribe` could reach the server before the SUB and be
/// lost, which the conformance suite showed.)
async fn sub_registered(client: &async_nats::Client) -> Result<(), EngineError> {
    let inbox = client.new_inbox();
    let mut barrier = client.subscribe(inbox.clone()).await.map_err(|e| failure("subscribe", e))?;
    client.publish(inbox, Bytes::new()).await.map_err(|e| failure("subscribe", e))?;
    match barrier.next().await {
        Some(_) => Ok(()),
        None => Err(failure("subscribe", "connection closed")),
    }
}

async fn read_control(mut subscriber: async_nats::Subscriber, handler: HandlerSlot, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            message = subscriber.next() => {
                let Some(message) = message else { return };
                if let Some(handler) = handler.get() {
                    handler.handle_control(&message.payload);
                }
            }
        }
    }
}

/// Reads one channel's subject and hands each push to the event handler, in order.
async fn read_channel(
    mut subscriber: async_nats::Subscriber,
    channel: String,
    handler: HandlerSlot,
    stop: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return,
            message = subscriber.next() => message,
        };
        let Some(message) = message else { return };
        let Some(handler) = handler.get() else { continue };
        let Ok(push) = Push::decode(message.payload.as_ref()) else {
            tracing::warn!(%channel, "undecodable message from nats skipped");
            continue;
        };
        if let Some(publication) = push.r#pub {
            handler.handle_publication(&channel, publication, StreamPosition::default(), None);
        } else if let Some(Join { info: Some(info) }) = push.join {
            handler.handle_join(&channel, info);
        } else if let Some(Leave { info: Some(info) }) = push.leave {
            handler.handle_leave(&channel, info);
        }
    }
}

#[async_trait]
impl Broker for NatsBroker {
    fn set_event_handler(&self, handler: Arc<dyn BrokerEventHandler>) {
        let _ = self.handler.set(handler);
    }

    /// Subscribes on the first local reference and returns once the server has the SUB (see
    /// [`sub_registered`]).
    async fn subscribe(&self, channel: &str) -> Result<(), EngineError> {
        if !valid_subject_part(channel) {
            return Err(EngineError::InvalidChannel);
        }
        // The whole call, including the wait for the lock other subscribes hold during their
        // round trip, is bounded by the write timeout.
        let subscribe = async {
            let mut channels = self.channels.lock().await;
            if let Some(existing) = channels.get_mut(channel) {
                existing.refs += 1;
                return Ok(());
            }
            let client = self.live_client()?;
            let subscriber =
                client.subscribe(self.subject(channel)).await.map_err(|e| failure("subscribe", e))?;
            sub_registered(&client).await?;
            let reader = tokio::spawn(read_channel(
                subscriber,
                channel.to_owned(),
                self.handler.clone(),
                self.stop.clone(),
            ));
            channels.insert(channel.to_owned(), ChannelSubscription { refs: 1, reader });
            Ok::<_, EngineError>(())
        };
        tokio::time::timeout(self.timeout, subscribe).await.map_err(|_| failure("subscribe", "timed out"))?
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), EngineError> {
        let mut channels = self.channels.lock().await;
        if let Some(existing) = channels.get_mut(channel) {
            existing.refs -= 1;
            if existing.refs == 0 {
                // Dropping the subscriber (inside the aborted task) sends UNSUB.
                channels.remove(channel).expect("present").reader.abort();
            }
        }
        Ok(())
    }

    async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        options: &PublishOptions,
    ) -> Result<PublishOutcome, EngineError> {
        if options.has_history() || options.idempotency_key.is_some() {
            // NATS keeps nothing: no stream to append to, no result to deduplicate against.
            return Err(EngineError::NotAvailable);
        }
        let push = Push { channel: channel.to_owned(), r#pub: Some(publication), ..Default::default() };
        self.publish_push(channel, push).await?;
        Ok(PublishOutcome::default())
    }

    async fn publish_join(&self, channel: &str, info: ClientInfo) -> Result<(), EngineError> {
        let push =
            Push { channel: channel.to_owned(), join: Some(Join { info: Some(info) }), ..Default::default() };
        self.publish_push(channel, push).await
    }

    async fn publish_leave(&self, channel: &str, info: ClientInfo) -> Result<(), EngineError> {
        let push = Push {
            channel: channel.to_owned(),
            leave: Some(Leave { info: Some(info) }),
            ..Default::default()
        };
        self.publish_push(channel, push).await
    }

    async fn history(&self, _channel: &str, _filter: &HistoryFilter) -> Result<HistoryResult, EngineError> {
        Err(EngineError::NotAvailable)
    }

    async fn remove_history(&self, _channel: &str) -> Result<(), EngineError> {
        Err(EngineError::NotAvailable)
    }

    async fn publish_control(&self, payload: Bytes, node: Option<&str>) -> Result<(), EngineError> {
        let subject = match node {
            Some(uid) => format!("{}.node.{uid}", self.prefix),
            None => format!("{}.control", self.prefix),
        };
        let client = self.live_client()?;
        tokio::time::timeout(self.timeout, client.publish(subject, payload))
            .await
            .map_err(|_| failure("publish", "timed out"))?
            .map_err(|e| failure("publish", e))
    }

    fn is_networked(&self) -> bool {
        true
    }

    fn is_healthy(&self) -> bool {
        self.client.get().is_some_and(|client| client.connection_state() == State::Connected)
    }
}

#[cfg(test)]
mod tests {
    use super::valid_subject_part;

    #[test]
    fn channels_that_are_not_literal_subjects_are_refused() {
        for good in ["news", "chat:room", "a.b", "user#42", "$private"] {
            assert!(valid_subject_part(good), "{good}");
        }
        for bad in ["", "a.*", "a.>", ">", "with space", "a..b", ".a", "a."] {
            assert!(!valid_subject_part(bad), "{bad:?}");
        }
    }
}
