//! One backend endpoint: its client, the headers (or metadata) each call carries, and the call
//! itself, bounded by the proxy's `timeout` from the first byte sent to the last one read.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tonic::metadata::MetadataMap;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::{ProxyCall, ProxyError};
use crate::config::{ProxyConfig, Tls, read_pem_source};
use crate::metrics::{Metrics, ProxyCalls};
use crate::proto::proxy as pb;
use crate::proto::proxy::centrifugo_proxy_client::CentrifugoProxyClient;
use crate::telemetry::{Span, SpanContext, SpanKind, TRACEPARENT, TRACESTATE, Tracer, Value};

/// The most a backend's answer may hold; a larger one is an error, not an allocation.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Idle keep-alive connections kept per backend host (Centrifugo keeps 255).
const MAX_IDLE_PER_HOST: usize = 255;

/// The HTTPS connector of every outgoing HTTP client.
pub type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// The pooled client HTTP backends and JWKS endpoints are called with.
pub type PooledClient = HttpClient<Https, Full<Bytes>>;

/// Where a connection's captured headers came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeaderSource {
    /// An HTTP request (WebSocket upgrade, HTTP-streaming and SSE requests): `http_headers`
    /// picks what is forwarded.
    #[default]
    Http,
    /// Request metadata of a gRPC stream: `grpc_metadata` picks what is forwarded.
    Metadata,
}

/// What a call carries from the client's connection besides the request itself.
#[derive(Debug, Clone, Copy)]
pub struct CallContext<'a> {
    /// The connection's request headers, lowercase names, as [`capture_headers`] kept them.
    pub headers: &'a [(String, String)],
    pub source: HeaderSource,
    /// The client's emulated headers (the `headers` of its connect command).
    pub emulated: &'a BTreeMap<String, String>,
}

/// The `names` (lowercase) of `headers`, each value that is text; what a transport keeps of a
/// connection's request for the proxies.
pub fn capture_headers(names: &[String], headers: &HeaderMap) -> Vec<(String, String)> {
    let mut kept = Vec::new();
    for name in names {
        for value in headers.get_all(name.as_str()) {
            if let Ok(text) = value.to_str() {
                kept.push((name.clone(), text.to_owned()));
            }
        }
    }
    kept
}

#[derive(Debug)]
pub(super) enum Client {
    Http {
        client: Box<PooledClient>,
        uri: http::Uri,
    },
    /// The `CentrifugoProxy` client, and its channel for the backend's other services.
    Grpc(CentrifugoProxyClient<Channel>, Channel),
}

/// One configured proxy endpoint.
#[derive(Debug)]
pub struct Backend {
    proxy: ProxyConfig,
    pub(super) client: Client,
    /// The proxy's name in the metrics (`default` for the unnamed ones).
    name: String,
    metrics: Arc<Metrics>,
    /// With `opentelemetry.enabled`: each call is a client span, and carries its
    /// `traceparent` to the backend.
    tracer: Option<Arc<Tracer>>,
}

impl Backend {
    /// A client for `proxy` (configured at `key`); connects on first use.
    pub fn new(
        key: &str,
        name: &str,
        proxy: &ProxyConfig,
        metrics: Arc<Metrics>,
        tracer: Option<Arc<Tracer>>,
    ) -> Result<Self> {
        let mut proxy = proxy.clone();
        for names in [&mut proxy.http_headers, &mut proxy.grpc_metadata, &mut proxy.emulated_headers] {
            names.iter_mut().for_each(|name| *name = name.to_ascii_lowercase());
        }
        let client = if let Some(host) = proxy.endpoint.strip_prefix("grpc://") {
            let (client, channel) = grpc_client(key, host, &proxy)?;
            Client::Grpc(client, channel)
        } else {
            let uri = proxy.endpoint.parse().with_context(|| format!("{key}.endpoint: not a URL"))?;
            Client::Http { client: Box::new(http_client(&format!("{key}.http.tls"), &proxy.http.tls)?), uri }
        };
        Ok(Self { proxy, client, name: name.to_owned(), metrics, tracer })
    }

    /// The figures of this proxy's `C` calls (`centrifugo_proxy_*`).
    pub fn calls(&self, kind: &str) -> Arc<ProxyCalls> {
        self.metrics.proxy(&self.name, self.protocol(), kind)
    }

    /// `"http"` or `"grpc"`, for logs.
    pub fn protocol(&self) -> &'static str {
        match self.client {
            Client::Http { .. } => "http",
            Client::Grpc(..) => "grpc",
        }
    }

    /// Payloads go as base64 (`b64data`) rather than raw JSON.
    pub fn binary(&self) -> bool {
        self.proxy.binary_encoding
    }

    /// The `encoding` field of requests.
    pub fn encoding(&self) -> &'static str {
        if self.proxy.binary_encoding { "binary" } else { "json" }
    }

    /// Requests carry the connection's `meta`.
    pub fn includes_meta(&self) -> bool {
        self.proxy.include_connection_meta
    }

    pub fn timeout(&self) -> Duration {
        self.proxy.timeout.0
    }

    /// gRPC requests go gzip-compressed (`grpc.compression`).
    pub(super) fn compresses(&self) -> bool {
        self.proxy.grpc.compression
    }

    pub(super) fn forwarded_names(&self) -> impl Iterator<Item = String> + '_ {
        // With tracing on, the connection's trace context is kept to parent the call spans.
        let trace_context = self.tracer.as_ref().map(|_| [TRACEPARENT.to_owned(), TRACESTATE.to_owned()]);
        self.proxy
            .http_headers
            .iter()
            .chain(&self.proxy.grpc_metadata)
            .cloned()
            .chain(trace_context.into_iter().flatten())
    }

    /// Sends `request` and waits for the answer, at most the proxy's timeout.
    pub async fn call<C: ProxyCall>(
        &self,
        request: C,
        context: &CallContext<'_>,
    ) -> Result<C::Response, ProxyError> {
        let timeout = self.timeout();
        let mut span =
            self.tracer.as_ref().map(|tracer| self.span(tracer, C::KIND, &pascal_case(C::KIND), context));
        let work = async {
            match &self.client {
                Client::Http { client, uri } => {
                    self.call_http::<C>(client, uri, &request, context, span.as_mut()).await
                }
                Client::Grpc(client, _) => {
                    self.call_grpc(client.clone(), request, context, span.as_mut()).await
                }
            }
        };
        let call = self.calls(C::KIND).start();
        let answer = tokio::time::timeout(timeout, work).await.unwrap_or(Err(ProxyError::Timeout(timeout)));
        if let Err(error) = &answer {
            call.failed();
            if let Some(span) = &mut span {
                span.set_error(error.to_string());
            }
        }
        answer
    }

    /// The client span of one call of `kind` (gRPC method `method`): a child of the trace
    /// context the client's connection request carried, if any.
    pub(super) fn span(
        &self,
        tracer: &Arc<Tracer>,
        kind: &'static str,
        method: &str,
        context: &CallContext<'_>,
    ) -> Span {
        let header = |name: &str| context.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        let parent = header(TRACEPARENT).and_then(|parent| SpanContext::parse(parent, header(TRACESTATE)));
        let (name, mut attributes): (String, Vec<(&'static str, Value)>) = match &self.client {
            Client::Http { uri, .. } => (
                format!("POST {}", uri.path()),
                vec![
                    ("http.request.method", "POST".into()),
                    ("url.full", uri.to_string().into()),
                    ("server.address", uri.host().unwrap_or_default().into()),
                ],
            ),
            Client::Grpc(..) => {
                let method = format!("{GRPC_PROXY_SERVICE}/{method}");
                (method.clone(), vec![("rpc.system.name", "grpc".into()), ("rpc.method", method.into())])
            }
        };
        attributes.push(("spinwire.proxy.name", self.name.clone().into()));
        attributes.push(("spinwire.proxy.type", kind.into()));
        let mut span = tracer.span(name, SpanKind::Client, parent);
        for (key, value) in attributes {
            span.set_attribute(key, value);
        }
        span
    }

    async fn call_http<C: ProxyCall>(
        &self,
        client: &PooledClient,
        uri: &http::Uri,
        request: &C,
        context: &CallContext<'_>,
        span: Option<&mut Span>,
    ) -> Result<C::Response, ProxyError> {
        let body = serde_json::to_vec(request).map_err(|e| ProxyError::Decode(e.to_string()))?;
        let mut outgoing = http::Request::post(uri.clone())
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ProxyError::Transport(e.to_string()))?;
        *outgoing.headers_mut() = self.outgoing_headers(context, false);
        outgoing
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        inject(outgoing.headers_mut(), span.as_deref());
        let response = client.request(outgoing).await.map_err(|e| ProxyError::Transport(error_chain(&e)))?;
        let status = response.status().as_u16();
        if let Some(span) = span {
            span.set_attribute("http.response.status_code", i64::from(status));
        }
        if status != 200 {
            return self.transformed::<C>(status);
        }
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| ProxyError::Transport(e.to_string()))?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| ProxyError::Decode(e.to_string()))
    }

    /// A non-200 answer: the configured error or disconnect for its status, else an error.
    fn transformed<C: ProxyCall>(&self, status: u16) -> Result<C::Response, ProxyError> {
        let transforms = &self.proxy.http.status_to_code_transforms;
        let Some(rule) = transforms.iter().find(|rule| rule.status_code == status) else {
            return Err(ProxyError::Status(status));
        };
        if rule.to_error.code > 0 {
            let error = &rule.to_error;
            let error =
                pb::Error { code: error.code, message: error.message.clone(), temporary: error.temporary };
            return Ok(C::rejected(Some(error), None));
        }
        let disconnect = &rule.to_disconnect;
        Ok(C::rejected(
            None,
            Some(pb::Disconnect { code: disconnect.code, reason: disconnect.reason.clone() }),
        ))
    }

    async fn call_grpc<C: ProxyCall>(
        &self,
        client: CentrifugoProxyClient<Channel>,
        request: C,
        context: &CallContext<'_>,
        span: Option<&mut Span>,
    ) -> Result<C::Response, ProxyError> {
        let mut outgoing = tonic::Request::new(request);
        let mut headers = self.outgoing_headers(context, true);
        inject(&mut headers, span.as_deref());
        *outgoing.metadata_mut() = MetadataMap::from_headers(headers);
        outgoing.set_timeout(self.timeout());
        let answer = C::grpc(client, outgoing).await;
        if let Some(span) = span {
            let code = answer.as_ref().err().map_or(tonic::Code::Ok, tonic::Status::code);
            span.set_attribute("rpc.response.status_code", grpc_code_name(code));
        }
        answer
            .map_err(|status| ProxyError::Grpc { code: status.code(), message: status.message().to_owned() })
    }

    /// With tracing on: the subscribe stream's span (until its first message), whose
    /// context the stream's metadata carries.
    pub(super) fn stream_span(&self, bidirectional: bool, context: &CallContext<'_>) -> Option<Span> {
        let method = if bidirectional { "SubscribeBidirectional" } else { "SubscribeUnidirectional" };
        self.tracer.as_ref().map(|tracer| self.span(tracer, "subscribe_stream", method, context))
    }

    /// Headers (or metadata) of one call, later sources winning: the static ones, the client's
    /// emulated headers named in `emulated_headers`, then the connection's request headers
    /// named in `http_headers` (or its gRPC metadata named in `grpc_metadata`). Emulated
    /// headers are client-controlled, so a name only in `http_headers` never comes from them.
    pub(super) fn outgoing_headers(&self, context: &CallContext<'_>, grpc: bool) -> HeaderMap {
        let proxy = &self.proxy;
        let mut headers = HeaderMap::new();
        let statics = if grpc { &proxy.grpc.static_metadata } else { &proxy.http.static_headers };
        for (name, value) in statics {
            set(&mut headers, name, value);
        }
        for (name, value) in context.emulated {
            if proxy.emulated_headers.contains(&name.to_ascii_lowercase()) {
                set(&mut headers, name, value);
            }
        }
        let allowed = match context.source {
            super::HeaderSource::Http => &proxy.http_headers,
            super::HeaderSource::Metadata => &proxy.grpc_metadata,
        };
        let mut replaced = Vec::new();
        for (name, value) in context.headers.iter().filter(|(name, _)| allowed.contains(name)) {
            let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value))
            else {
                continue;
            };
            // A forwarded header replaces every earlier value of its name, then keeps all its own.
            if !replaced.contains(&name) {
                headers.remove(&name);
                replaced.push(name.clone());
            }
            headers.append(name, value);
        }
        if grpc && !proxy.grpc.credentials_key.is_empty() {
            set(&mut headers, &proxy.grpc.credentials_key, &proxy.grpc.credentials_value);
        }
        headers
    }
}

/// Sets one header, skipping names or values HTTP cannot carry.
fn set(headers: &mut HeaderMap, name: &str, value: &str) {
    if let (Ok(name), Ok(value)) =
        (HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()), HeaderValue::from_str(value))
    {
        headers.insert(name, value);
    }
}

/// The proxy protocol's gRPC service, as its method names are written.
const GRPC_PROXY_SERVICE: &str = "centrifugal.centrifugo.proxy.CentrifugoProxy";

/// `sub_refresh` → `SubRefresh`: a call kind as its gRPC method is named.
fn pascal_case(kind: &str) -> String {
    kind.split('_')
        .map(|word| {
            let mut chars = word.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// The canonical name of a gRPC status code (`OK`, `UNAVAILABLE`, …), as OpenTelemetry
/// records it.
pub fn grpc_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Sets the call span's `traceparent` (and the `tracestate` it carries) on a request, in
/// place of any the client's headers brought: the backend's parent is this call.
pub(super) fn inject(headers: &mut HeaderMap, span: Option<&Span>) {
    let Some(span) = span else { return };
    let context = span.context();
    if let Ok(value) = HeaderValue::try_from(context.traceparent()) {
        headers.insert(TRACEPARENT, value);
    }
    headers.remove(TRACESTATE);
    if !context.trace_state.is_empty()
        && let Ok(value) = HeaderValue::try_from(context.trace_state.as_str())
    {
        headers.insert(TRACESTATE, value);
    }
}

/// An error with its causes, for logs ("connection refused" sits a few sources down).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A pooled HTTP/1.1 and HTTP/2 (negotiated over TLS) client: `tls` when enabled, else the
/// system's roots. Also the JWKS client's and (with the ACME client's body) autocert's.
pub fn http_client<B>(section: &str, tls: &Tls) -> Result<HttpClient<Https, B>>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let defaults = Tls::default();
    let tls_used = if tls.enabled { tls } else { &defaults };
    let config = crate::tls::client_config(section, tls_used)?;
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config).https_or_http();
    let builder = if tls.enabled && !tls.server_name.is_empty() {
        let name = rustls::pki_types::ServerName::try_from(tls.server_name.clone())
            .with_context(|| format!("{section}.server_name: not a DNS name or IP address"))?;
        builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
    } else {
        builder
    };
    let connector = builder.enable_http1().enable_http2().build();
    Ok(HttpClient::builder(TokioExecutor::new()).pool_max_idle_per_host(MAX_IDLE_PER_HOST).build(connector))
}

/// A lazily connecting gRPC channel to `host` (`grpc://host:port`), TLS when configured.
fn grpc_client(
    key: &str,
    host: &str,
    proxy: &ProxyConfig,
) -> Result<(CentrifugoProxyClient<Channel>, Channel)> {
    let tls = &proxy.grpc.tls;
    let scheme = if tls.enabled { "https" } else { "http" };
    let host = host.trim_end_matches('/');
    if host.is_empty() || host.contains('/') {
        bail!("{key}.endpoint: expected grpc://host:port");
    }
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{host}"))
        .with_context(|| format!("{key}.endpoint: not a host:port"))?
        .connect_timeout(proxy.timeout.0)
        .tcp_nodelay(true);
    if tls.enabled {
        endpoint = endpoint.tls_config(grpc_tls(&format!("{key}.grpc.tls"), tls)?).context("gRPC TLS")?;
    }
    let channel = endpoint.connect_lazy();
    let client = CentrifugoProxyClient::new(channel.clone()).max_decoding_message_size(MAX_RESPONSE_BYTES);
    if !proxy.grpc.compression {
        return Ok((client, channel));
    }
    // `grpc.compression`: requests go gzip-compressed, and the backend may answer compressed.
    let gzip = tonic::codec::CompressionEncoding::Gzip;
    Ok((client.send_compressed(gzip).accept_compressed(gzip), channel))
}

fn grpc_tls(section: &str, tls: &Tls) -> Result<ClientTlsConfig> {
    let mut config = ClientTlsConfig::new();
    config = if tls.server_ca_pem.trim().is_empty() {
        config.with_native_roots()
    } else {
        config.ca_certificate(Certificate::from_pem(read_pem_source(
            &format!("{section}.server_ca_pem"),
            &tls.server_ca_pem,
        )?))
    };
    if !tls.cert_pem.trim().is_empty() {
        let cert = read_pem_source(&format!("{section}.cert_pem"), &tls.cert_pem)?;
        let key = read_pem_source(&format!("{section}.key_pem"), &tls.key_pem)?;
        config = config.identity(Identity::from_pem(cert, key));
    }
    if !tls.server_name.is_empty() {
        config = config.domain_name(tls.server_name.clone());
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(grpc: bool) -> Backend {
        let mut proxy = ProxyConfig {
            endpoint: if grpc { "grpc://127.0.0.1:1".into() } else { "http://127.0.0.1:1/connect".into() },
            http_headers: vec!["Authorization".into(), "X-Real".into()],
            grpc_metadata: vec!["x-meta".into()],
            emulated_headers: vec!["X-Emulated".into(), "authorization".into()],
            ..Default::default()
        };
        proxy.http.static_headers.insert("x-static".into(), "s".into());
        proxy.http.static_headers.insert("x-real".into(), "static".into());
        proxy.grpc.static_metadata.insert("x-static-md".into(), "m".into());
        proxy.grpc.credentials_key = "x-credentials".into();
        proxy.grpc.credentials_value = "secret".into();
        Backend::new("test", "default", &proxy, Arc::new(Metrics::new("test")), None).unwrap()
    }

    fn names(headers: &HeaderMap) -> Vec<String> {
        let mut all: Vec<String> =
            headers.iter().map(|(k, v)| format!("{k}={}", v.to_str().unwrap())).collect();
        all.sort();
        all
    }

    #[tokio::test]
    async fn emulated_headers_go_only_where_emulated_headers_allow() {
        let emulated: BTreeMap<String, String> =
            [("X-Emulated", "e"), ("X-Real", "forged"), ("X-Other", "o")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
        let transport =
            vec![("x-real".to_owned(), "real".to_owned()), ("x-meta".to_owned(), "md".to_owned())];
        let context = CallContext { headers: &transport, source: HeaderSource::Http, emulated: &emulated };
        // A name only in http_headers never comes from emulation; the transport value replaces
        // the static one; x-meta is metadata, not an HTTP header.
        let http = backend(false).outgoing_headers(&context, false);
        assert_eq!(names(&http), ["x-emulated=e", "x-real=real", "x-static=s"]);
        let grpc = backend(true).outgoing_headers(&context, true);
        assert_eq!(names(&grpc), ["x-credentials=secret", "x-emulated=e", "x-real=real", "x-static-md=m"]);
        let streamed = CallContext { source: HeaderSource::Metadata, ..context };
        let http = backend(false).outgoing_headers(&streamed, false);
        assert_eq!(names(&http), ["x-emulated=e", "x-meta=md", "x-real=static", "x-static=s"]);
    }

    #[tokio::test]
    async fn an_unreachable_backend_fails_within_the_timeout() {
        let proxy = ProxyConfig {
            endpoint: "http://127.0.0.1:9/connect".into(),
            timeout: crate::config::ConfigDuration(Duration::from_millis(200)),
            ..Default::default()
        };
        let backend = Backend::new("test", "default", &proxy, Arc::new(Metrics::new("test")), None).unwrap();
        let emulated = BTreeMap::new();
        let context = CallContext { headers: &[], source: HeaderSource::Http, emulated: &emulated };
        let started = std::time::Instant::now();
        let result = backend.call(pb::ConnectRequest::default(), &context).await;
        assert!(matches!(result, Err(ProxyError::Transport(_) | ProxyError::Timeout(_))), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
