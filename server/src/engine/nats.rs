//! The NATS broker (`broker.type: nats`): PUB/SUB between nodes over a NATS server, nothing
//! else. As in Centrifugo, NATS keeps no history: publishing with history options, history
//! reads and recovery answer "not available" (108); presence lives in the presence manager
//! (memory, or Redis through `presence_manager`). Delivery is at most once.
//!
//! Subjects are Centrifugo's: `<prefix>.client.<channel>` carries a Protobuf `Push` with the
//! publication, join or leave; `<prefix>.control` and `<prefix>.node.<uid>` carry node control
//! messages. A channel that is not a valid subject (whitespace, an empty token) is refused with
//! 107. With `allow_wildcards` a subscription may use `*` and `>` tokens: it receives every
//! matching channel's publications, each naming its own channel; publishing to a wildcard is
//! always refused.
//!
//! With `raw_mode.enabled` publications travel as their bare data on `raw_mode.prefix` + the
//! channel with `channel_replacements` applied, so other NATS clients can publish to and read
//! Spinwire channels; join and leave are not sent (presence stays correct locally), and a
//! publication received on another subject than the subscribed one names its channel.
//!
//! async-nats owns the connection: it reconnects (here after 50 ms, doubling to 1 s) and
//! restores subscriptions itself. While it is disconnected a publish fails at once with 100
//! instead of waiting in the client's buffer.

use std::collections::{BTreeMap, HashMap};
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
use crate::config::{NatsBroker as NatsSection, NatsRawMode};
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
    allow_wildcards: bool,
    raw: Option<Arc<NatsRawMode>>,
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

/// A channel that is a valid NATS wildcard subject suffix: `*` tokens anywhere, `>` last.
fn valid_wildcard_part(channel: &str) -> bool {
    let tokens: Vec<&str> = channel.split('.').collect();
    !channel.contains([' ', '\t', '\r', '\n'])
        && tokens.iter().enumerate().all(|(i, token)| match *token {
            "" => false,
            "*" => true,
            ">" => i == tokens.len() - 1,
            other => !other.contains(['*', '>']),
        })
}

fn is_wildcard(channel: &str) -> bool {
    channel.contains(['*', '>'])
}

/// `channel_replacements` applied left to right; at each position the longest matching key wins
/// (ties in key order), so overlapping keys behave the same on every run.
fn replace_all(channel: &str, replacements: &BTreeMap<String, String>) -> String {
    let mut keys: Vec<(&String, &String)> = replacements.iter().filter(|(key, _)| !key.is_empty()).collect();
    keys.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(b.0)));
    let mut out = String::with_capacity(channel.len());
    let mut rest = channel;
    'scan: while let Some(first) = rest.chars().next() {
        for (key, value) in &keys {
            if let Some(after) = rest.strip_prefix(key.as_str()) {
                out.push_str(value);
                rest = after;
                continue 'scan;
            }
        }
        out.push(first);
        rest = &rest[first.len_utf8()..];
    }
    out
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
            // The same client TLS as every outgoing connection: PEM text, base64 or a path, the
            // system's roots unless `server_ca_pem` is set.
            let config =
                crate::tls::client_config("broker.nats.tls", &section.tls).map_err(|e| format!("{e:#}"))?;
            options = options.require_tls(true).tls_client_config(config);
        }
        let broker = Arc::new(Self {
            client: Arc::default(),
            prefix: prefix.clone(),
            allow_wildcards: section.allow_wildcards,
            raw: section.raw_mode.enabled.then(|| Arc::new(section.raw_mode.clone())),
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
        match &self.raw {
            Some(raw) => format!("{}{}", raw.prefix, replace_all(channel, &raw.channel_replacements)),
            None => format!("{}.client.{channel}", self.prefix),
        }
    }

    /// Whether `channel` may be subscribed to (a wildcard only with `allow_wildcards`).
    fn subscribable(&self, channel: &str) -> bool {
        if is_wildcard(channel) {
            self.allow_wildcards && valid_wildcard_part(channel)
        } else {
            valid_subject_part(channel)
        }
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
        let payload = match &self.raw {
            // Raw mode carries publications' bare data, and nothing else.
            Some(_) => match push.r#pub {
                Some(publication) => publication.data,
                None => return Ok(()),
            },
            None => Bytes::from(push.encode_to_vec()),
        };
        let client = self.live_client()?;
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

/// How a channel's messages are read: Centrifugo's `Push`, or bare data in raw mode (whose
/// subject, minus the raw prefix, names the channel when it is not the subscribed one).
#[derive(Clone)]
enum Reading {
    Pushes,
    Raw { prefix: String },
}

/// Reads one channel's subject and hands each push to the event handler, in order.
async fn read_channel(
    mut subscriber: async_nats::Subscriber,
    channel: String,
    reading: Reading,
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
        if let Reading::Raw { prefix } = &reading {
            let named = message.subject.as_str().strip_prefix(prefix.as_str()).unwrap_or(&message.subject);
            let concrete = if named == channel { String::new() } else { named.to_owned() };
            let publication = Publication { data: message.payload, channel: concrete, ..Default::default() };
            handler.handle_publication(&channel, publication, StreamPosition::default(), None);
            continue;
        }
        let Ok(push) = Push::decode(message.payload.as_ref()) else {
            tracing::warn!(%channel, "undecodable message from nats skipped");
            continue;
        };
        if let Some(mut publication) = push.r#pub {
            // Through a wildcard subscription each publication names its own channel.
            if push.channel != channel {
                publication.channel = push.channel;
            }
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
        if !self.subscribable(channel) {
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
            let reading = match &self.raw {
                Some(raw) => Reading::Raw { prefix: raw.prefix.clone() },
                None => Reading::Pushes,
            };
            let reader = tokio::spawn(read_channel(
                subscriber,
                channel.to_owned(),
                reading,
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
    use super::{BTreeMap, replace_all, valid_subject_part, valid_wildcard_part};

    #[test]
    fn wildcards_are_whole_tokens_and_tails_are_last() {
        for good in ["news.*", "*.sport", "news.>", ">", "a.*.c"] {
            assert!(valid_wildcard_part(good), "{good}");
        }
        for bad in ["news*", "news.>.x", "a..*", "", "a b.*"] {
            assert!(!valid_wildcard_part(bad), "{bad:?}");
        }
    }

    #[test]
    fn replacements_apply_longest_first_left_to_right() {
        let replacements: BTreeMap<String, String> = [(":", "."), ("::", "_"), ("#", "-")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(replace_all("chat:room#1", &replacements), "chat.room-1");
        assert_eq!(replace_all("a::b:c", &replacements), "a_b.c");
        assert_eq!(replace_all("plain", &BTreeMap::new()), "plain");
    }

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

#[cfg(test)]
mod server_tests {
    use std::sync::Mutex;

    use super::*;
    use crate::test_support::NatsServer;

    /// What arrived: (channel, the publication's own channel, data).
    #[derive(Default)]
    struct Seen(Mutex<Vec<(String, String, String)>>);

    impl BrokerEventHandler for Seen {
        fn handle_publication(
            &self,
            channel: &str,
            publication: Publication,
            _: StreamPosition,
            _: Option<Bytes>,
        ) {
            let data = String::from_utf8_lossy(&publication.data).into_owned();
            self.0.lock().unwrap().push((channel.to_owned(), publication.channel, data));
        }
        fn handle_join(&self, _: &str, _: ClientInfo) {}
        fn handle_leave(&self, _: &str, _: ClientInfo) {}
        fn handle_control(&self, _: &[u8]) {}
    }

    async fn connected(section: NatsSection) -> (Arc<NatsBroker>, Arc<Seen>) {
        let broker = NatsBroker::new(&section, "node").unwrap();
        let seen = Arc::new(Seen::default());
        broker.set_event_handler(seen.clone());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !broker.is_healthy() {
            assert!(tokio::time::Instant::now() < deadline, "nats did not connect");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (broker, seen)
    }

    async fn arrived(seen: &Seen, count: usize) -> Vec<(String, String, String)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let now = seen.0.lock().unwrap().clone();
            if now.len() >= count || tokio::time::Instant::now() > deadline {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn publication(data: &str) -> Publication {
        Publication { data: Bytes::from(data.to_owned()), ..Default::default() }
    }

    #[tokio::test]
    async fn wildcard_subscriptions_name_each_channel() {
        let Some(server) = NatsServer::start().await else { return };
        let strict = NatsSection { url: server.url(), prefix: "strict".into(), ..Default::default() };
        let (broker, _) = connected(strict).await;
        assert_eq!(broker.subscribe("news.*").await, Err(EngineError::InvalidChannel), "off by default");
        let open = NatsSection {
            url: server.url(),
            prefix: "w".into(),
            allow_wildcards: true,
            ..Default::default()
        };
        let (broker, seen) = connected(open).await;
        broker.subscribe("news.*").await.unwrap();
        broker.publish("news.sport", publication("goal"), &PublishOptions::default()).await.unwrap();
        let got = arrived(&seen, 1).await;
        assert_eq!(got, [("news.*".to_owned(), "news.sport".to_owned(), "goal".to_owned())]);
        let refused = broker.publish("news.*", publication("x"), &PublishOptions::default()).await;
        assert_eq!(refused, Err(EngineError::InvalidChannel), "no publishing to a wildcard");
    }

    /// `tls` with the CA given as PEM text (the form a config file or variable carries) reaches
    /// a server that requires TLS.
    #[tokio::test]
    async fn tls_with_a_pem_text_ca_connects() {
        let hosts = ["127.0.0.1".to_owned(), "localhost".to_owned()];
        let cert = crate::tls::generate_dev_certificate(&hosts, Duration::from_secs(3600)).unwrap();
        let Some(server) = NatsServer::start_tls(&cert.cert_pem, &cert.key_pem).await else { return };
        let tls =
            crate::config::Tls { enabled: true, server_ca_pem: cert.cert_pem.clone(), ..Default::default() };
        let section = NatsSection { url: server.url(), tls, ..Default::default() };
        let (broker, seen) = connected(section).await;
        broker.subscribe("secure").await.unwrap();
        broker.publish("secure", publication("over tls"), &PublishOptions::default()).await.unwrap();
        assert_eq!(arrived(&seen, 1).await[0].2, "over tls");
    }

    #[tokio::test]
    async fn raw_mode_carries_bare_data_on_replaced_subjects() {
        let Some(server) = NatsServer::start().await else { return };
        let raw = NatsRawMode {
            enabled: true,
            channel_replacements: [(":".to_owned(), ".".to_owned())].into_iter().collect(),
            prefix: "app.".into(),
        };
        let section = NatsSection { url: server.url(), raw_mode: raw, ..Default::default() };
        let (broker, seen) = connected(section).await;
        let outside = async_nats::connect(server.url()).await.unwrap();
        let mut listener = outside.subscribe("app.chat.1").await.unwrap();
        outside.flush().await.unwrap();
        broker.subscribe("chat:1").await.unwrap();
        broker
            .publish("chat:1", publication("{\"from\":\"spinwire\"}"), &PublishOptions::default())
            .await
            .unwrap();
        let message = tokio::time::timeout(Duration::from_secs(5), listener.next()).await.unwrap().unwrap();
        assert_eq!(&message.payload[..], b"{\"from\":\"spinwire\"}", "bare data, no Push");
        outside.publish("app.chat.1", Bytes::from_static(b"{\"from\":\"outside\"}")).await.unwrap();
        outside.flush().await.unwrap();
        let got = arrived(&seen, 2).await;
        assert!(
            got.contains(&("chat:1".into(), "chat.1".into(), "{\"from\":\"outside\"}".into())),
            "{got:?}"
        );
        broker.publish_join("chat:1", ClientInfo::default()).await.unwrap();
    }
}
