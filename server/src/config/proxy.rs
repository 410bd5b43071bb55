//! The proxy sections, with Centrifugo v6's keys: `client.proxy.connect` / `.refresh`, the
//! unnamed `channel.proxy.*` and `rpc.proxy` (referenced by the name `default`), and the
//! named `proxies[]` that channel and RPC namespaces pick by `*_proxy_name`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ConfigDuration;
use super::schema::{Tls, TransformDisconnect};

/// The name namespaces use for the unnamed proxy of their kind (`channel.proxy.subscribe`…).
pub const DEFAULT_PROXY_NAME: &str = "default";

/// One backend endpoint and how to call it (Centrifugo's `Proxy`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxyConfig {
    /// `http://…` / `https://…` (JSON over HTTP POST) or `grpc://host:port` (gRPC).
    pub endpoint: String,
    pub timeout: ConfigDuration,
    /// Transport-level request headers forwarded to the backend (lowercase names).
    pub http_headers: Vec<String>,
    /// gRPC request metadata keys forwarded (from clients connected over gRPC).
    pub grpc_metadata: Vec<String>,
    /// Headers from the client's headers emulation (its connect frame) forwarded: client
    /// controlled, so only names listed here, never those of `http_headers`.
    pub emulated_headers: Vec<String>,
    /// Payloads travel as base64 in `b64data` (binary, non-JSON data).
    pub binary_encoding: bool,
    /// Every request but connect carries the connection's `meta`.
    pub include_connection_meta: bool,
    pub http: ProxyHttp,
    pub grpc: ProxyGrpc,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            timeout: ConfigDuration::secs(1),
            http_headers: Vec::new(),
            grpc_metadata: Vec::new(),
            emulated_headers: Vec::new(),
            binary_encoding: false,
            include_connection_meta: false,
            http: ProxyHttp::default(),
            grpc: ProxyGrpc::default(),
        }
    }
}

/// `http`: options of HTTP endpoints.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxyHttp {
    pub tls: Tls,
    /// Sent with every request; forwarded client headers win over these.
    pub static_headers: BTreeMap<String, String>,
    /// A backend's non-200 status answered as a client error or a disconnect.
    pub status_to_code_transforms: Vec<StatusToCodeTransform>,
}

/// `grpc`: options of gRPC endpoints.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxyGrpc {
    pub tls: Tls,
    /// Metadata key (and `credentials_value`) sent with every call.
    pub credentials_key: String,
    pub credentials_value: String,
    pub compression: bool,
    pub static_metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusToCodeTransform {
    pub status_code: u16,
    pub to_error: TransformError,
    pub to_disconnect: TransformDisconnect,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TransformError {
    pub code: u32,
    pub message: String,
    pub temporary: bool,
}

/// `client.proxy.connect` and `client.proxy.refresh`: a proxy and its switch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SwitchedProxy {
    pub enabled: bool,
    #[serde(flatten)]
    pub proxy: ProxyConfig,
}

/// `client.proxy`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientProxies {
    pub connect: SwitchedProxy,
    pub refresh: SwitchedProxy,
}

/// `channel.proxy`: the unnamed proxy of each channel kind.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ChannelProxies {
    pub subscribe: ProxyConfig,
    pub publish: ProxyConfig,
    pub sub_refresh: ProxyConfig,
    pub subscribe_stream: ProxyConfig,
    pub map_publish: ProxyConfig,
    pub map_remove: ProxyConfig,
    pub shared_poll_refresh: ProxyConfig,
}

/// One of `proxies[]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NamedProxy {
    pub name: String,
    #[serde(flatten)]
    pub proxy: ProxyConfig,
}

/// What a namespace's proxy is for; each kind has its own unnamed (`default`) proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProxyKind {
    Subscribe,
    Publish,
    SubRefresh,
    SubscribeStream,
    Rpc,
    MapPublish,
    MapRemove,
    SharedPollRefresh,
}

impl ProxyKind {
    /// The `type` label of the proxy metrics.
    pub fn metric_type(self) -> &'static str {
        match self {
            Self::Subscribe => "subscribe",
            Self::Publish => "publish",
            Self::SubRefresh => "sub_refresh",
            Self::SubscribeStream => "subscribe_stream",
            Self::Rpc => "rpc",
            Self::MapPublish => "map_publish",
            Self::MapRemove => "map_remove",
            Self::SharedPollRefresh => "shared_poll_refresh",
        }
    }

    /// The option prefix in a namespace (`subscribe` → `subscribe_proxy_enabled`).
    pub fn option_prefix(self) -> &'static str {
        match self {
            Self::Subscribe => "subscribe",
            Self::Publish => "publish",
            Self::SubRefresh => "sub_refresh",
            Self::SubscribeStream => "subscribe_stream",
            Self::Rpc => "",
            Self::MapPublish => "map.publish",
            Self::MapRemove => "map.remove",
            Self::SharedPollRefresh => "shared_poll.refresh",
        }
    }
}

/// A namespace that turns a proxy on: where (`key`, the enabling option's path), for what, and
/// which proxy it names (empty means [`DEFAULT_PROXY_NAME`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyUse {
    pub key: String,
    pub kind: ProxyKind,
    pub name: String,
}

impl ProxyUse {
    /// The name with Centrifugo's default applied.
    pub fn proxy_name(&self) -> &str {
        if self.name.is_empty() { DEFAULT_PROXY_NAME } else { &self.name }
    }
}

/// Every enabled namespace proxy in the configuration, channel namespaces first.
pub fn proxy_uses(config: &super::Config) -> Vec<ProxyUse> {
    let mut uses = Vec::new();
    let channel = &config.channel;
    let namespaces = std::iter::once(("channel.without_namespace".to_owned(), &channel.without_namespace))
        .chain(
            channel
                .namespaces
                .iter()
                .enumerate()
                .map(|(i, ns)| (format!("channel.namespaces[{i}]"), &ns.options)),
        );
    for (key, options) in namespaces {
        let switches = [
            (ProxyKind::Subscribe, options.subscribe_proxy_enabled, &options.subscribe_proxy_name),
            (ProxyKind::Publish, options.publish_proxy_enabled, &options.publish_proxy_name),
            (ProxyKind::SubRefresh, options.sub_refresh_proxy_enabled, &options.sub_refresh_proxy_name),
            (
                ProxyKind::SubscribeStream,
                options.subscribe_stream_proxy_enabled,
                &options.subscribe_stream_proxy_name,
            ),
        ];
        for (kind, enabled, name) in switches {
            if enabled {
                let key = format!("{key}.{}_proxy_enabled", kind.option_prefix());
                uses.push(ProxyUse { key, kind, name: name.clone() });
            }
        }
        uses.extend(map_and_poll_uses(&key, options));
    }
    let rpc = &config.rpc;
    let rpc_namespaces = std::iter::once(("rpc.without_namespace".to_owned(), &rpc.without_namespace)).chain(
        rpc.namespaces.iter().enumerate().map(|(i, ns)| (format!("rpc.namespaces[{i}]"), &ns.options)),
    );
    for (key, options) in rpc_namespaces {
        if options.proxy_enabled {
            let key = format!("{key}.proxy_enabled");
            uses.push(ProxyUse { key, kind: ProxyKind::Rpc, name: options.proxy_name.clone() });
        }
    }
    uses
}

/// A namespace's map publish/remove proxies and, for shared-poll channels, its refresh proxy
/// (always on there: polling is what the namespace does).
fn map_and_poll_uses(key: &str, options: &super::ChannelOptions) -> Vec<ProxyUse> {
    let map = &options.map;
    let mut uses = Vec::new();
    if map.publish_proxy_enabled {
        let key = format!("{key}.map.publish_proxy_enabled");
        uses.push(ProxyUse { key, kind: ProxyKind::MapPublish, name: map.publish_proxy_name.clone() });
    }
    if map.remove_proxy_enabled {
        let key = format!("{key}.map.remove_proxy_enabled");
        uses.push(ProxyUse { key, kind: ProxyKind::MapRemove, name: map.remove_proxy_name.clone() });
    }
    if options.is_shared_poll() {
        let key = format!("{key}.shared_poll.proxy_name");
        let name = options.shared_poll.proxy_name.clone();
        uses.push(ProxyUse { key, kind: ProxyKind::SharedPollRefresh, name });
    }
    uses
}

/// The proxy a use names: the kind's unnamed one for `default`, else one of `proxies[]`.
pub fn resolve_proxy<'a>(config: &'a super::Config, kind: ProxyKind, name: &str) -> Option<&'a ProxyConfig> {
    if name.is_empty() || name == DEFAULT_PROXY_NAME {
        let unnamed = &config.channel.proxy;
        return Some(match kind {
            ProxyKind::Subscribe => &unnamed.subscribe,
            ProxyKind::Publish => &unnamed.publish,
            ProxyKind::SubRefresh => &unnamed.sub_refresh,
            ProxyKind::SubscribeStream => &unnamed.subscribe_stream,
            ProxyKind::Rpc => &config.rpc.proxy,
            ProxyKind::MapPublish => &unnamed.map_publish,
            ProxyKind::MapRemove => &unnamed.map_remove,
            ProxyKind::SharedPollRefresh => &unnamed.shared_poll_refresh,
        });
    }
    config.proxies.iter().find(|p| p.name == name).map(|p| &p.proxy)
}
