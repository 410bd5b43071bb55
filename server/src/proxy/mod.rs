//! Calls to the application backend (Centrifugo's proxy feature): the backends configured, how
//! one call travels (JSON over HTTP POST or the `CentrifugoProxy` gRPC service) and what can go
//! wrong on the way. What a result *means* for a connection or a subscription is the session's
//! business; this module only delivers requests and answers, bounded by each proxy's timeout.
//!
//! - `backend.rs`: one endpoint, its client (pooled HTTP/1.1 and HTTP/2, or a gRPC channel) and
//!   the headers or metadata a call carries;
//! - `calls.rs`: the request types, each tied to its gRPC method and its response;
//! - `stream.rs`: subscribe streams (gRPC only), uni- and bidirectional.
//!
//! Every kind of call is a [`ProxyCall`]; the session builds the request, [`Backend::call`]
//! answers with the backend's response or a [`ProxyError`].

mod backend;
mod calls;
mod deliver;
mod stream;

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result};

pub use backend::{
    Backend, CallContext, HeaderSource, Https, PooledClient, capture_headers, grpc_code_name, http_client,
};
pub use calls::{ProxyCall, RequestBase};
pub use stream::{OpenedStream, StreamEvent, StreamPublications, StreamPublisher};

use crate::config::{Config, DEFAULT_PROXY_NAME, ProxyKind, proxy_uses, resolve_proxy};
use crate::metrics::Metrics;
use crate::telemetry::Tracer;

/// Why a call brought no usable answer. Each is logged by the caller and answered as
/// Centrifugo does (an internal error, or a refresh retried later): never a hang.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("request failed: {0}")]
    Transport(String),
    #[error("unexpected HTTP status {0}")]
    Status(u16),
    #[error("undecodable response: {0}")]
    Decode(String),
    #[error("gRPC status {code:?}: {message}")]
    Grpc { code: tonic::Code, message: String },
}

/// Every backend the configuration uses, built once at startup.
#[derive(Debug, Default)]
pub struct Proxies {
    pub connect: Option<Arc<Backend>>,
    pub refresh: Option<Arc<Backend>>,
    /// Channel and RPC proxies by kind and name (`default` for the unnamed ones). A named
    /// proxy used for several kinds is one backend, so one connection pool.
    by_name: HashMap<ProxyKind, HashMap<String, Arc<Backend>>>,
    /// Request headers and gRPC metadata keys some proxy forwards, plus
    /// `client.user_id_http_header` (lowercase): transports keep these from a connection's
    /// request and nothing else. Each backend still forwards only the ones it names.
    forwarded_names: Vec<String>,
    /// Some proxy forwards headers from the client's headers emulation.
    forwards_emulated: bool,
}

impl Proxies {
    /// Builds a client for every proxy in use (HTTP pools and gRPC channels connect lazily, so
    /// an unreachable backend does not stop startup).
    pub fn from_config(
        config: &Config,
        metrics: &Arc<Metrics>,
        tracer: Option<&Arc<Tracer>>,
    ) -> Result<Self> {
        let mut proxies = Self::default();
        let client = &config.client.proxy;
        let add = |proxies: &mut Self, key: &str, name: &str, proxy: &crate::config::ProxyConfig| {
            proxies.add(key, name, proxy, metrics.clone(), tracer.cloned())
        };
        if client.connect.enabled {
            let backend =
                add(&mut proxies, "client.proxy.connect", DEFAULT_PROXY_NAME, &client.connect.proxy)?;
            backend.calls("connect");
            proxies.connect = Some(backend);
        }
        if client.refresh.enabled {
            let backend =
                add(&mut proxies, "client.proxy.refresh", DEFAULT_PROXY_NAME, &client.refresh.proxy)?;
            backend.calls("refresh");
            proxies.refresh = Some(backend);
        }
        let mut named: HashMap<String, Arc<Backend>> = HashMap::new();
        for used in proxy_uses(config) {
            let name = used.proxy_name().to_owned();
            let proxy = resolve_proxy(config, used.kind, &name)
                .with_context(|| format!("{}: no such proxy", used.key))?;
            let backend = match named.get(&name) {
                Some(backend) if name != DEFAULT_PROXY_NAME => backend.clone(),
                _ => add(&mut proxies, &used.key, &name, proxy)?,
            };
            // Present (at zero) from the start, as Centrifugo's.
            backend.calls(used.kind.metric_type());
            if name != DEFAULT_PROXY_NAME {
                named.insert(name.clone(), backend.clone());
            }
            proxies.by_name.entry(used.kind).or_default().insert(name, backend);
        }
        // Transports keep this one for the connect step itself (header authentication).
        let user_header = &config.client.user_id_http_header;
        if !user_header.is_empty() {
            proxies.forwarded_names.push(user_header.to_ascii_lowercase());
        }
        proxies.forwarded_names.sort();
        proxies.forwarded_names.dedup();
        Ok(proxies)
    }

    fn add(
        &mut self,
        key: &str,
        name: &str,
        proxy: &crate::config::ProxyConfig,
        metrics: Arc<Metrics>,
        tracer: Option<Arc<Tracer>>,
    ) -> Result<Arc<Backend>> {
        let backend = Backend::new(key, name, proxy, metrics, tracer)?;
        self.forwarded_names.extend(backend.forwarded_names());
        self.forwards_emulated |= !proxy.emulated_headers.is_empty();
        Ok(Arc::new(backend))
    }

    /// The backend of a namespace's `kind` proxy named `name` (empty: the unnamed one).
    pub fn get(&self, kind: ProxyKind, name: &str) -> Option<&Arc<Backend>> {
        let name = if name.is_empty() { DEFAULT_PROXY_NAME } else { name };
        self.by_name.get(&kind)?.get(name)
    }

    /// Whether any namespace uses a `kind` proxy.
    pub fn has(&self, kind: ProxyKind) -> bool {
        self.by_name.contains_key(&kind)
    }

    /// Header and metadata names transports keep for the proxies (see [`capture_headers`]).
    pub fn forwarded_names(&self) -> &[String] {
        &self.forwarded_names
    }

    /// Whether a connection's emulated headers must be kept for the proxies.
    pub fn forwards_emulated(&self) -> bool {
        self.forwards_emulated
    }
}
