//! The node's metrics: what `/metrics` exposes in Prometheus' text format and what `info`
//! reports per node, under Centrifugo's names and labels so existing dashboards and alerts keep
//! working (the catalogue, with Centrifugo's sources, is in ARCHITECTURE.md).
//!
//! [`Metrics`] is one typed struct, not a registry looked up by name: the code that counts
//! holds the counter itself, so counting is one relaxed atomic add. Labels that Centrifugo
//! 6.9 never fills are exposed as it exposes them (`channel_namespace=""`,
//! `client_name="unnamed"` or `"unregistered"`). Figures that are state, not events (clients,
//! channels, queued bytes), are read from the node at scrape time ([`NodeFigures`]).
//!
//! **Boundary:** base layer; names nothing of the crate but `sync`.

mod info;
mod primitives;
mod process;
mod text;
mod traffic;

use std::sync::Arc;
use std::time::Instant;

pub use info::InfoAggregator;

/// False only in a build with `--features metrics-off`: the benchmark's baseline, the same code
/// with every count, observation and the clock reads made for them compiled out, so the
/// metrics' cost can be measured against "metrics off" (`tests/bench/run.sh metrics_cost`).
pub const COUNTING: bool = !cfg!(feature = "metrics-off");
pub use primitives::{Counter, Family as SeriesFamily, Gauge, Histogram, Summary, Timing};
pub use text::{Family, Series, Value, render};
pub use traffic::{FrameType, TransportTraffic};

use crate::sync::RwLock;

/// Buckets of the client command histogram (Centrifugo's).
static COMMAND_BUCKETS: [f64; 15] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Prometheus' default buckets: API commands and proxy calls.
static DEFAULT_BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
static BROADCAST_BUCKETS: [f64; 19] = [
    1e-6, 5e-6, 1e-5, 5e-5, 0.0001, 0.00025, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];
static LAG_BUCKETS: [f64; 12] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0];

/// What a node sends to (or receives from) its broker, the `type` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Publication,
    Join,
    Leave,
    Control,
    MapPublication,
    MapRemoval,
}

impl MessageType {
    const ALL: [MessageType; 6] =
        [Self::Publication, Self::Join, Self::Leave, Self::Control, Self::MapPublication, Self::MapRemoval];

    fn name(self) -> &'static str {
        match self {
            Self::Publication => "publication",
            Self::Join => "join",
            Self::Leave => "leave",
            Self::Control => "control",
            Self::MapPublication => "map_publication",
            Self::MapRemoval => "map_removal",
        }
    }
}

/// Declares [`NodeAction`] from one list of variants and their label values.
macro_rules! node_actions {
    ($($variant:ident => $name:literal,)*) => {
        /// A node-level operation, the `action` label of `centrifugo_node_action_count`
        /// (Centrifugo's names; each counted once per call, none per delivery).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum NodeAction {
            $($variant,)*
        }

        impl NodeAction {
            const ALL: &'static [NodeAction] = &[$(NodeAction::$variant,)*];
            pub const COUNT: usize = Self::ALL.len();

            fn name(self) -> &'static str {
                match self {
                    $(NodeAction::$variant => $name,)*
                }
            }
        }
    };
}

node_actions! {
    AddClient => "add_client",
    RemoveClient => "remove_client",
    AddSubscription => "add_subscription",
    RemoveSubscription => "remove_subscription",
    BrokerSubscribe => "broker_subscribe",
    BrokerUnsubscribe => "broker_unsubscribe",
    AddPresence => "add_presence",
    RemovePresence => "remove_presence",
    Presence => "presence",
    PresenceStats => "presence_stats",
    History => "history",
    HistoryRecover => "history_recover",
    HistoryRecoverCache => "history_recover_cache",
    HistoryStreamTop => "history_stream_top",
    HistoryRemove => "history_remove",
    MapStateRead => "map_state_read",
    MapStreamRead => "map_stream_read",
    MapStreamPosition => "map_stream_position",
    MapStats => "map_stats",
    MapPublish => "map_publish",
    MapRemove => "map_remove",
    MapClear => "map_clear",
    MapBrokerSubscribe => "map_broker_subscribe",
    MapBrokerUnsubscribe => "map_broker_unsubscribe",
    Survey => "survey",
}

/// The client commands `centrifugo_client_command_duration_seconds` has a series for from the
/// start (Centrifugo creates these twelve).
const CLIENT_METHODS: [FrameType; 12] = [
    FrameType::Connect,
    FrameType::Subscribe,
    FrameType::Unsubscribe,
    FrameType::Publish,
    FrameType::Presence,
    FrameType::PresenceStats,
    FrameType::History,
    FrameType::Send,
    FrameType::Rpc,
    FrameType::Refresh,
    FrameType::SubRefresh,
    FrameType::Unknown,
];

/// State read from the node when the metrics are read.
#[derive(Debug, Clone, Default)]
pub struct NodeFigures {
    pub clients: u32,
    pub users: u32,
    pub channels: u32,
    pub subscriptions: u32,
    pub nodes: u32,
    /// Bytes waiting in the connections' outbound queues.
    pub outbound_bytes: u64,
    pub alive_tasks: u64,
    /// The delivery canary, when enabled: healthy, and seconds since its last round trip.
    pub canary: Option<(bool, f64)>,
    /// With tracing on: spans dropped because the export queue was full.
    pub spans_dropped: Option<u64>,
    /// With lifecycle events on: their queue and what became of them.
    pub lifecycle: Option<LifecycleFigures>,
}

/// The lifecycle events' counts (`spinwire_lifecycle_*`).
#[derive(Debug, Clone, Copy, Default)]
pub struct LifecycleFigures {
    pub queued: u64,
    pub dropped: u64,
    pub sent: u64,
    /// Batch deliveries the backend did not acknowledge (each retried).
    pub failures: u64,
}

/// One proxy's call figures (`centrifugo_proxy_*`).
#[derive(Debug)]
pub struct ProxyCalls {
    pub duration: Timing,
    pub errors: Counter,
    pub inflight: Gauge,
}

impl ProxyCalls {
    fn new() -> Self {
        Self {
            duration: Timing::new(&DEFAULT_BUCKETS),
            errors: Counter::default(),
            inflight: Gauge::default(),
        }
    }

    /// Counts a call in flight until the guard drops, then records its duration.
    pub fn start(self: &Arc<Self>) -> ProxyCall {
        self.inflight.add(1);
        ProxyCall { calls: self.clone(), started: Instant::now() }
    }
}

/// A proxy call in flight; see [`ProxyCalls::start`].
#[derive(Debug)]
pub struct ProxyCall {
    calls: Arc<ProxyCalls>,
    started: Instant,
}

impl ProxyCall {
    /// The call failed (transport, status or decoding); its duration still counts.
    pub fn failed(&self) {
        self.calls.errors.inc();
    }
}

impl Drop for ProxyCall {
    fn drop(&mut self) {
        self.calls.inflight.add(-1);
        self.calls.duration.observe_since(self.started);
    }
}

/// One consumer's message counts (`centrifugo_consumers_*`).
#[derive(Debug, Default)]
pub struct ConsumerCounts {
    /// Messages acknowledged: executed, or skipped as impossible to execute.
    pub processed: Counter,
    /// Failed attempts (connection losses, retried commands).
    pub errors: Counter,
}

/// Every metric of one node.
#[derive(Debug)]
pub struct Metrics {
    version: String,
    messages_sent: [Counter; 6],
    messages_received: [Counter; 6],
    actions: [Counter; NodeAction::COUNT],
    client_commands: [Timing; 12],
    /// Ping to pong, by transport.
    pub ping_pong: SeriesFamily<Histogram>,
    pub reply_errors: SeriesFamily<Counter>,
    pub server_disconnects: SeriesFamily<Counter>,
    pub server_unsubscribes: SeriesFamily<Counter>,
    pub recoveries: SeriesFamily<Counter>,
    pub connections_accepted: SeriesFamily<Counter>,
    pub connections_inflight: SeriesFamily<Gauge>,
    pub subscriptions_inflight: SeriesFamily<Gauge>,
    pub outgoing_closes: SeriesFamily<Counter>,
    pub broadcast_duration: Histogram,
    pub pub_sub_lag: Histogram,
    pub api_commands: SeriesFamily<Timing>,
    pub api_errors: SeriesFamily<Counter>,
    pub proxies: SeriesFamily<ProxyCalls>,
    pub consumers: SeriesFamily<ConsumerCounts>,
    /// Messages a consumer acknowledged without executing, by reason (`malformed`, …).
    pub consumer_skips: SeriesFamily<Counter>,
    /// Connection requests refused by `client.connection_limit` (503).
    pub connection_limit: Counter,
    pub session_panics: Counter,
    /// Delivery canary round trips, and the times it turned unhealthy.
    pub canary_round_trip: Histogram,
    pub canary_failures: Counter,
    transports: RwLock<Vec<Arc<TransportTraffic>>>,
}

impl Metrics {
    /// `version` is the node's build version (`centrifugo_node_build{version}`).
    pub fn new(version: impl Into<String>) -> Self {
        Self {
            version: version.into(),
            messages_sent: Default::default(),
            messages_received: Default::default(),
            actions: Default::default(),
            ping_pong: SeriesFamily::new(&["transport"], || Histogram::new(&COMMAND_BUCKETS)),
            client_commands: std::array::from_fn(|_| Timing::new(&COMMAND_BUCKETS)),
            reply_errors: SeriesFamily::new(&["channel_namespace", "code", "method"], Counter::default),
            server_disconnects: SeriesFamily::new(&["code"], Counter::default),
            server_unsubscribes: SeriesFamily::new(&["channel_namespace", "code"], Counter::default),
            recoveries: SeriesFamily::new(
                &["channel_namespace", "has_recovered_publications", "recovered"],
                Counter::default,
            ),
            connections_accepted: SeriesFamily::new(CONNECTION_LABELS, Counter::default),
            connections_inflight: SeriesFamily::new(CONNECTION_LABELS, Gauge::default),
            subscriptions_inflight: SeriesFamily::new(&["channel_namespace", "client_name"], Gauge::default),
            outgoing_closes: SeriesFamily::new(&["code", "transport"], Counter::default),
            broadcast_duration: Histogram::new(&BROADCAST_BUCKETS),
            pub_sub_lag: Histogram::new(&LAG_BUCKETS),
            api_commands: SeriesFamily::new(&["method", "protocol"], || Timing::new(&DEFAULT_BUCKETS)),
            api_errors: SeriesFamily::new(&["error", "method", "protocol"], Counter::default),
            proxies: SeriesFamily::new(&["name", "protocol", "type"], ProxyCalls::new),
            consumers: SeriesFamily::new(&["consumer_name"], ConsumerCounts::default),
            consumer_skips: SeriesFamily::new(&["consumer_name", "reason"], Counter::default),
            connection_limit: Counter::default(),
            session_panics: Counter::default(),
            canary_round_trip: Histogram::new(&LAG_BUCKETS),
            canary_failures: Counter::default(),
            transports: RwLock::default(),
        }
    }

    pub fn message_sent(&self, kind: MessageType) {
        self.messages_sent[kind as usize].inc();
    }

    pub fn action(&self, action: NodeAction) {
        self.actions[action as usize].inc();
    }

    pub fn message_received(&self, kind: MessageType) {
        self.messages_received[kind as usize].inc();
    }

    /// A client command of kind `method`, handled since `started`, is done (success or error).
    pub fn client_command(&self, method: FrameType, started: Instant) {
        let index = CLIENT_METHODS.iter().position(|m| *m == method).unwrap_or(CLIENT_METHODS.len() - 1);
        self.client_commands[index].observe_since(started);
    }

    /// A reply carrying error `code` went to a client for a `method` command.
    pub fn reply_error(&self, method: FrameType, code: u32) {
        self.reply_errors.get(&["", &code.to_string(), method.name()]).inc();
    }

    /// The frame counters of the transport called `name` (one set per name).
    pub fn transport(&self, name: &'static str) -> Arc<TransportTraffic> {
        if let Some(found) = self.transports.read_locked().iter().find(|t| t.name == name) {
            return found.clone();
        }
        let mut transports = self.transports.write_locked();
        if let Some(found) = transports.iter().find(|t| t.name == name) {
            return found.clone();
        }
        let traffic = Arc::new(TransportTraffic::new(name));
        transports.push(traffic.clone());
        traffic
    }

    /// The calls of one proxy: `kind` is its `type` label (`connect`, `rpc`, …).
    pub fn proxy(&self, name: &str, protocol: &str, kind: &str) -> Arc<ProxyCalls> {
        self.proxies.get(&[name, protocol, kind])
    }

    /// An API command answered; `error` is its error code, if it failed.
    pub fn api_command(&self, protocol: &str, method: &str, started: Instant, error: Option<u32>) {
        self.api_commands.get(&[method, protocol]).observe_since(started);
        if let Some(code) = error {
            self.api_error(protocol, method, &code.to_string());
        }
    }

    /// An API request failed; `error` is the code or the failing stage (`unmarshal`, …).
    pub fn api_error(&self, protocol: &str, method: &str, error: &str) {
        self.api_errors.get(&[error, method, protocol]).inc();
    }

    /// Every family, read now; `figures` supplies what is read from the node.
    pub fn families(&self, figures: &NodeFigures) -> Vec<Family> {
        let mut families = self.node_families(figures);
        families.extend(self.client_families());
        families.extend(self.transport_families());
        families.extend(self.backend_families());
        families.extend(self.spinwire_families(figures));
        families.extend(process::families());
        families
    }

    /// The text `/metrics` answers with.
    pub fn exposition(&self, figures: &NodeFigures) -> String {
        render(&mut self.families(figures))
    }
}

const CONNECTION_LABELS: &[&str] = &["accept_protocol", "client_name", "client_version", "transport"];

/// The `client_name` label as Centrifugo 6.9 fills it (no registered names there).
pub fn client_name_label(name: &str) -> &'static str {
    if name.is_empty() { "unnamed" } else { "unregistered" }
}

/// The `client_version` label as Centrifugo 6.9 fills it.
pub fn client_version_label(version: &str) -> &'static str {
    if version.is_empty() { "unversioned" } else { "unregistered" }
}

fn counter(value: u64) -> Value {
    Value::Counter(value as f64)
}

fn gauge(value: impl Into<f64>) -> Value {
    Value::Gauge(value.into())
}

fn labelled<M>(family: &SeriesFamily<M>, value: impl Fn(&M) -> Value) -> Vec<Series> {
    family
        .series()
        .into_iter()
        .map(|(values, series)| Series {
            labels: family.names.iter().copied().zip(values).collect(),
            value: value(&series),
        })
        .collect()
}

fn family_of(name: &str, help: &'static str, series: Vec<Series>) -> Family {
    Family { name: name.to_owned(), help, series }
}

impl Metrics {
    fn node_families(&self, figures: &NodeFigures) -> Vec<Family> {
        let by_type = |counters: &[Counter; 6], created: usize| {
            MessageType::ALL
                .iter()
                .zip(counters)
                .enumerate()
                .filter(|(index, (_, total))| *index < created || total.get() > 0)
                .map(|(_, (kind, total))| Series {
                    labels: vec![("channel_namespace", String::new()), ("type", kind.name().to_owned())],
                    value: counter(total.get()),
                })
                .collect()
        };
        vec![
            Family::single(
                "centrifugo_node_num_clients",
                "Number of clients connected.",
                gauge(figures.clients),
            ),
            Family::single(
                "centrifugo_node_num_users",
                "Number of unique users connected.",
                gauge(figures.users),
            ),
            Family::single(
                "centrifugo_node_num_channels",
                "Number of channels with one or more subscribers.",
                gauge(figures.channels),
            ),
            Family::single(
                "centrifugo_node_num_subscriptions",
                "Number of subscriptions.",
                gauge(figures.subscriptions),
            ),
            Family::single(
                "centrifugo_node_num_nodes",
                "Number of nodes in the cluster.",
                gauge(figures.nodes),
            ),
            Family::new("centrifugo_node_build", "Node build info.")
                .with(vec![("version", self.version.clone())], gauge(1.0)),
            family_of(
                "centrifugo_node_messages_sent_count",
                "Number of messages sent by node to broker.",
                by_type(&self.messages_sent, 4),
            ),
            family_of(
                "centrifugo_node_messages_received_count",
                "Number of messages received from broker.",
                by_type(&self.messages_received, 4),
            ),
            family_of(
                "centrifugo_node_action_count",
                "Number of various actions called.",
                self.action_series(),
            ),
            Family::single(
                "centrifugo_node_client_connection_limit",
                "Number of refused requests due to node client connection limit.",
                counter(self.connection_limit.get()),
            ),
            histogram_family(
                "centrifugo_node_broadcast_duration_seconds",
                "Broadcast duration in seconds",
                vec![("channel_namespace", String::new()), ("type", "publication".into())],
                &self.broadcast_duration,
            ),
            histogram_family(
                "centrifugo_node_pub_sub_lag_seconds",
                "Pub sub lag in seconds",
                vec![("channel_namespace", String::new())],
                &self.pub_sub_lag,
            ),
        ]
        .into_iter()
        .filter(|family| !family.series.is_empty())
        .collect()
    }

    /// The actions called at least once (Centrifugo's series appear on first use).
    fn action_series(&self) -> Vec<Series> {
        NodeAction::ALL
            .iter()
            .zip(&self.actions)
            .filter(|(_, total)| total.get() > 0)
            .map(|(action, total)| Series {
                labels: vec![("action", action.name().to_owned()), ("channel_namespace", String::new())],
                value: counter(total.get()),
            })
            .collect()
    }

    fn client_families(&self) -> Vec<Family> {
        let method_labels = |method: &FrameType| {
            vec![("channel_namespace", String::new()), ("method", method.name().to_owned())]
        };
        let summaries = CLIENT_METHODS
            .iter()
            .zip(&self.client_commands)
            .map(|(method, timing)| Series {
                labels: method_labels(method),
                value: Value::Summary(timing.summary.value()),
            })
            .collect();
        let histograms = CLIENT_METHODS
            .iter()
            .zip(&self.client_commands)
            .map(|(method, timing)| Series {
                labels: method_labels(method),
                value: Value::Histogram(timing.histogram.value()),
            })
            .collect();
        vec![
            family_of(
                "centrifugo_client_command_duration_seconds",
                "Client command duration summary.",
                summaries,
            ),
            family_of(
                "centrifugo_client_command_duration_seconds_histogram",
                "Client command duration histogram.",
                histograms,
            ),
            family_of(
                "centrifugo_client_ping_pong_duration_seconds",
                "Ping/Pong duration in seconds",
                labelled(&self.ping_pong, |h| Value::Histogram(h.value())),
            ),
            family_of(
                "centrifugo_client_num_reply_errors",
                "Number of errors in replies sent to clients.",
                labelled(&self.reply_errors, |c| counter(c.get())),
            ),
            family_of(
                "centrifugo_client_num_server_disconnects",
                "Number of server initiated disconnects.",
                labelled(&self.server_disconnects, |c| counter(c.get())),
            ),
            family_of(
                "centrifugo_client_num_server_unsubscribes",
                "Number of server initiated unsubscribes.",
                labelled(&self.server_unsubscribes, |c| counter(c.get())),
            ),
            family_of(
                "centrifugo_client_recover",
                "Count of recover operations with success/fail resolution.",
                labelled(&self.recoveries, |c| counter(c.get())),
            ),
            family_of(
                "centrifugo_client_connections_accepted",
                "Count of accepted transports.",
                labelled(&self.connections_accepted, |c| counter(c.get())),
            ),
            family_of(
                "centrifugo_client_connections_inflight",
                "Number of inflight client connections.",
                labelled(&self.connections_inflight, |g| gauge(g.get() as f64)),
            ),
            family_of(
                "centrifugo_client_subscriptions_inflight",
                "Number of inflight client subscriptions.",
                labelled(&self.subscriptions_inflight, |g| gauge(g.get() as f64)),
            ),
        ]
        .into_iter()
        .filter(|family| !family.series.is_empty())
        .collect()
    }

    fn transport_families(&self) -> Vec<Family> {
        let mut families = [
            ("centrifugo_transport_messages_sent", "Number of messages sent to client connections over specific transport."),
            ("centrifugo_transport_messages_sent_size", "Size in bytes of messages sent to client connections over specific transport (uncompressed and does not include framing overhead)."),
            ("centrifugo_transport_messages_received", "Number of messages received from client connections over specific transport."),
            ("centrifugo_transport_messages_received_size", "Size in bytes of messages received from client connections over specific transport (uncompressed and does not include framing overhead)."),
        ]
        .map(|(name, help)| Family::new(name, help));
        for traffic in self.transports.read_locked().iter() {
            for (frame, figures) in traffic.figures() {
                let labels = || {
                    vec![
                        ("channel_namespace", String::new()),
                        ("frame_type", frame.name().to_owned()),
                        ("transport", traffic.name.to_owned()),
                    ]
                };
                let [sent, sent_size, received, received_size] = &mut families;
                if figures.sent > 0 {
                    sent.series.push(Series { labels: labels(), value: counter(figures.sent) });
                    sent_size.series.push(Series { labels: labels(), value: counter(figures.sent_bytes) });
                }
                if figures.received > 0 {
                    received.series.push(Series { labels: labels(), value: counter(figures.received) });
                    received_size
                        .series
                        .push(Series { labels: labels(), value: counter(figures.received_bytes) });
                }
            }
        }
        let closes = family_of(
            "centrifugo_transport_outgoing_close_count",
            "Number of close frames sent to clients, by transport and code.",
            labelled(&self.outgoing_closes, |c| counter(c.get())),
        );
        families.into_iter().chain([closes]).filter(|family| !family.series.is_empty()).collect()
    }

    fn backend_families(&self) -> Vec<Family> {
        vec![
            family_of(
                "centrifugo_api_command_duration_seconds",
                "Duration of API per command.",
                labelled(&self.api_commands, |t| Value::Summary(t.summary.value())),
            ),
            family_of(
                "centrifugo_api_command_duration_seconds_histogram",
                "Histogram of duration of API per command.",
                labelled(&self.api_commands, |t| Value::Histogram(t.histogram.value())),
            ),
            family_of(
                "centrifugo_api_command_errors_total",
                "Total errors in API commands.",
                labelled(&self.api_errors, |c| counter(c.get())),
            ),
            family_of(
                "centrifugo_proxy_duration_seconds",
                "Duration of proxy call.",
                labelled(&self.proxies, |p| Value::Summary(p.duration.summary.value())),
            ),
            family_of(
                "centrifugo_proxy_duration_seconds_histogram",
                "Histogram of duration of proxy call.",
                labelled(&self.proxies, |p| Value::Histogram(p.duration.histogram.value())),
            ),
            family_of(
                "centrifugo_proxy_errors",
                "Proxy call error count.",
                labelled(&self.proxies, |p| counter(p.errors.get())),
            ),
            family_of(
                "centrifugo_proxy_inflight_requests",
                "Number of inflight proxy requests.",
                labelled(&self.proxies, |p| gauge(p.inflight.get() as f64)),
            ),
            family_of(
                "centrifugo_consumers_messages_processed_total",
                "Total number of processed messages in consumer",
                labelled(&self.consumers, |c| counter(c.processed.get())),
            ),
            family_of(
                "centrifugo_consumers_errors_total",
                "Total number of errors in consumer",
                labelled(&self.consumers, |c| counter(c.errors.get())),
            ),
            family_of(
                "spinwire_consumers_messages_skipped_total",
                "Messages a consumer acknowledged without executing them, by reason.",
                labelled(&self.consumer_skips, |c| counter(c.get())),
            ),
        ]
        .into_iter()
        .filter(|family| !family.series.is_empty())
        .collect()
    }

    fn spinwire_families(&self, figures: &NodeFigures) -> Vec<Family> {
        let open = Family {
            name: "spinwire_transport_connections".into(),
            help: "Open client connections per transport (connected or not yet).",
            series: self
                .transports
                .read_locked()
                .iter()
                .map(|t| Series {
                    labels: vec![("transport", t.name.to_owned())],
                    value: gauge(t.open.get() as f64),
                })
                .collect(),
        };
        vec![
            Family::single(
                "spinwire_outbound_queue_bytes",
                "Bytes waiting in the connections' outbound queues.",
                gauge(figures.outbound_bytes as f64),
            ),
            Family::single(
                "spinwire_runtime_alive_tasks",
                "Tasks alive in the async runtime.",
                gauge(figures.alive_tasks as f64),
            ),
            Family::single(
                "spinwire_session_panics_total",
                "Client sessions closed with 3004 after a panic in their command handling.",
                counter(self.session_panics.get()),
            ),
            open,
        ]
        .into_iter()
        .chain(self.canary_families(figures))
        .chain(figures.lifecycle.map(lifecycle_families).into_iter().flatten())
        .chain(figures.spans_dropped.map(|dropped| {
            Family::single(
                "spinwire_telemetry_spans_dropped_total",
                "Trace spans dropped because the export queue (OTEL_BSP_MAX_QUEUE_SIZE) was full.",
                counter(dropped),
            )
        }))
        .filter(|family| !family.series.is_empty())
        .collect()
    }

    /// The delivery canary's families, present only when it is enabled.
    fn canary_families(&self, figures: &NodeFigures) -> Vec<Family> {
        let Some((healthy, since)) = figures.canary else { return Vec::new() };
        vec![
            Family::single(
                "spinwire_health_canary_healthy",
                "1 while the delivery canary's round trips through the broker complete in time.",
                gauge(if healthy { 1.0 } else { 0.0 }),
            ),
            Family::single(
                "spinwire_health_canary_seconds_since_round_trip",
                "Seconds since the delivery canary's last completed round trip.",
                gauge(since),
            ),
            Family::single(
                "spinwire_health_canary_failures_total",
                "Times the delivery canary turned unhealthy.",
                counter(self.canary_failures.get()),
            ),
            histogram_family(
                "spinwire_health_canary_round_trip_seconds",
                "Round trip time of delivery canary publications through the broker.",
                Vec::new(),
                &self.canary_round_trip,
            ),
        ]
    }
}

fn histogram_family(
    name: &str,
    help: &'static str,
    labels: Vec<(&'static str, String)>,
    histogram: &Histogram,
) -> Family {
    let value = histogram.value();
    let mut family = Family::new(name, help);
    if value.count > 0 {
        family.series.push(Series { labels, value: Value::Histogram(value) });
    }
    family
}

/// The lifecycle events' families, present only when they are enabled.
fn lifecycle_families(figures: LifecycleFigures) -> Vec<Family> {
    vec![
        Family::single(
            "spinwire_lifecycle_events_queued",
            "Lifecycle events waiting to be sent to the backend.",
            gauge(figures.queued as f64),
        ),
        Family::single(
            "spinwire_lifecycle_events_dropped_total",
            "Lifecycle events dropped because their queue (lifecycle_events.queue_size) was full.",
            counter(figures.dropped),
        ),
        Family::single(
            "spinwire_lifecycle_events_sent_total",
            "Lifecycle events the backend acknowledged.",
            counter(figures.sent),
        ),
        Family::single(
            "spinwire_lifecycle_deliveries_failed_total",
            "Batches of lifecycle events the backend did not acknowledge (each one retried).",
            counter(figures.failures),
        ),
    ]
}
