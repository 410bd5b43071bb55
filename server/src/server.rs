//! Listeners, HTTP routing and the shutdown sequence.
//!
//! [`Server::bind`] opens every listener first (so a port conflict fails fast and tests can read
//! the bound addresses); [`Server::serve`] then runs until the shutdown future resolves and
//! drains: stop accepting → close every session with 3001 "shutdown" → wait for sessions up to
//! `shutdown.timeout` → stop.
//!
//! Routes on the external port: the WebSocket endpoint, and — unless `http_server.internal_port`
//! moves them to a second listener — the HTTP API and `/health`. With `http_server.tls` the
//! listeners speak HTTPS (the internal one too, unless `tls_external` or its own
//! `internal_tls`); with `http_server.http3` the external port's UDP side serves WebTransport.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::api::{Executor, grpc::GrpcApi};
use crate::node::Node;
use crate::tls;
use crate::transport::grpc::{ClientStreamService, ReceiveLimitStatus, UniStreamService};
use crate::transport::http_stream::{self, ResponseBody};
use crate::transport::tcp::SharedTcp;
use crate::transport::{websocket, webtransport};

/// Listen backlog for every TCP listener (bursts of reconnecting clients must not be dropped).
const LISTEN_BACKLOG: u32 = 4096;

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy)]
struct Routes {
    external: bool,
    internal: bool,
}

/// Which client streaming services a client-facing gRPC listener serves.
#[derive(Debug, Clone, Copy)]
struct ClientGrpc {
    uni: bool,
    stream: bool,
}

/// One bound HTTP listener.
#[derive(Debug)]
struct HttpListener {
    listener: TcpListener,
    routes: Routes,
    /// Serve HTTPS (and WSS) with this config.
    tls: Option<Arc<rustls::ServerConfig>>,
}

/// Bound listeners, ready to serve.
#[derive(Debug)]
pub struct Server {
    node: Arc<Node>,
    http: Vec<HttpListener>,
    grpc: Option<TcpListener>,
    client_grpc: Vec<(TcpListener, ClientGrpc)>,
    /// HTTP/3 (WebTransport) on the external port's UDP side.
    http3: Option<quinn::Endpoint>,
}

/// How long a TLS client has to finish its handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The host a listener binds for a configured address. Empty means every interface, IPv6 and
/// IPv4 alike (as Go's `:port` does): browsers try `localhost` as `::1` first, and QUIC does
/// not fall back to IPv4 the way TCP connection racing does.
fn listen_host(address: &str) -> &str {
    if address.is_empty() { "::" } else { address }
}

fn socket_addr(address: &str, port: u16) -> anyhow::Result<SocketAddr> {
    let host = listen_host(address);
    format!("{host}:{port}")
        .parse()
        .or_else(|_| format!("[{host}]:{port}").parse())
        .with_context(|| format!("invalid listen address {host:?}"))
}

/// A socket bound to the configured address. For the empty address that is `[::]` with
/// IPV6_V6ONLY off, set explicitly rather than left to the OS default (BSDs and
/// `net.ipv6.bindv6only=1` would otherwise refuse IPv4 silently); only a host without IPv6
/// falls back to `0.0.0.0`.
fn bind_socket(address: &str, port: u16, kind: socket2::Type) -> anyhow::Result<socket2::Socket> {
    let addr = socket_addr(address, port)?;
    let bind = |addr: SocketAddr| -> std::io::Result<socket2::Socket> {
        let socket = socket2::Socket::new(socket2::Domain::for_address(addr), kind, None)?;
        if addr.is_ipv6() && address.is_empty() {
            socket.set_only_v6(false)?;
        }
        if kind == socket2::Type::STREAM {
            socket.set_reuse_address(true)?;
            socket.set_tcp_nodelay(true)?;
        }
        socket.bind(&addr.into())?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    };
    let ipv6_missing = |error: &std::io::Error| {
        error.kind() == std::io::ErrorKind::AddrNotAvailable || error.raw_os_error() == Some(EAFNOSUPPORT)
    };
    match bind(addr) {
        Err(error) if address.is_empty() && ipv6_missing(&error) => {
            bind(SocketAddr::from(([0, 0, 0, 0], port)))
                .with_context(|| format!("cannot listen on port {port}"))
        }
        result => result.with_context(|| format!("cannot listen on {addr}")),
    }
}

/// Linux's "address family not supported" (no IPv6 in the kernel).
const EAFNOSUPPORT: i32 = 97;

fn bind_tcp(address: &str, port: u16) -> anyhow::Result<TcpListener> {
    let socket = bind_socket(address, port, socket2::Type::STREAM)?;
    socket.listen(LISTEN_BACKLOG as i32)?;
    Ok(TcpListener::from_std(socket.into())?)
}

impl Server {
    /// Binds the configured listeners.
    pub fn bind(node: Arc<Node>) -> anyhow::Result<Self> {
        let config = &node.config;
        let server_config = &config.http_server;
        let mut http = Vec::new();
        let internal_port: Option<u16> = if server_config.internal_port.is_empty() {
            None
        } else {
            Some(
                server_config
                    .internal_port
                    .parse()
                    .context("http_server.internal_port must be a port number")?,
            )
        };
        let separate_internal = internal_port.is_some_and(|p| p != server_config.port)
            || (!server_config.internal_address.is_empty()
                && server_config.internal_address != server_config.address);
        let external_tls = if server_config.tls.enabled {
            Some(tls::server_config("http_server.tls", &server_config.tls, tls::TCP_ALPN, false)?)
        } else {
            None
        };
        let external = bind_tcp(&server_config.address, server_config.port)?;
        let http3 = if server_config.http3.enabled {
            // Same address and port number over UDP (the TCP port, when the system chose it).
            let port = external.local_addr()?.port();
            let udp = bind_socket(&server_config.address, port, socket2::Type::DGRAM)?;
            let quic_tls = tls::server_config("http_server.tls", &server_config.tls, tls::H3_ALPN, true)?;
            Some(webtransport::bind(udp.into(), quic_tls, &node)?)
        } else {
            None
        };
        http.push(HttpListener {
            listener: external,
            routes: Routes { external: true, internal: !separate_internal },
            tls: external_tls.clone(),
        });
        if separate_internal {
            let address = if server_config.internal_address.is_empty() {
                &server_config.address
            } else {
                &server_config.internal_address
            };
            let internal_tls = if server_config.internal_tls.enabled {
                Some(tls::server_config(
                    "http_server.internal_tls",
                    &server_config.internal_tls,
                    tls::TCP_ALPN,
                    false,
                )?)
            } else if server_config.tls_external {
                None
            } else {
                external_tls
            };
            http.push(HttpListener {
                listener: bind_tcp(address, internal_port.unwrap_or(server_config.port))?,
                routes: Routes { external: false, internal: true },
                tls: internal_tls,
            });
        }
        let grpc = if config.grpc_api.enabled {
            Some(bind_tcp(&config.grpc_api.address, config.grpc_api.port)?)
        } else {
            None
        };
        let mut client_grpc = Vec::new();
        let (uni, stream) = (&config.uni_grpc, &config.grpc_stream);
        let same_host = listen_host(&uni.address) == listen_host(&stream.address);
        let shared = uni.enabled && stream.enabled && same_host && uni.port == stream.port;
        if uni.enabled {
            client_grpc.push((bind_tcp(&uni.address, uni.port)?, ClientGrpc { uni: true, stream: shared }));
        }
        if stream.enabled && !shared {
            client_grpc
                .push((bind_tcp(&stream.address, stream.port)?, ClientGrpc { uni: false, stream: true }));
        }
        Ok(Self { node, http, grpc, client_grpc, http3 })
    }

    /// Address of the listener serving the unidirectional gRPC stream, when enabled.
    pub fn uni_grpc_addr(&self) -> Option<SocketAddr> {
        self.client_grpc.iter().find(|(_, s)| s.uni).map(|(l, _)| l.local_addr().expect("bound"))
    }

    /// Address of the listener serving the bidirectional gRPC client stream, when enabled.
    pub fn grpc_stream_addr(&self) -> Option<SocketAddr> {
        self.client_grpc.iter().find(|(_, s)| s.stream).map(|(l, _)| l.local_addr().expect("bound"))
    }

    /// Address of the main (external) HTTP listener.
    pub fn http_addr(&self) -> SocketAddr {
        self.http[0].listener.local_addr().expect("bound listener has an address")
    }

    /// UDP address of the HTTP/3 endpoint, when enabled.
    pub fn http3_addr(&self) -> Option<SocketAddr> {
        self.http3.as_ref().map(|e| e.local_addr().expect("bound endpoint has an address"))
    }

    /// Address of the gRPC API listener, when enabled.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.as_ref().map(|l| l.local_addr().expect("bound listener has an address"))
    }

    /// Serves until `shutdown` resolves, then drains (see the module docs).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let node = self.node;
        let executor = Executor::new(node.clone());
        let stop = CancellationToken::new();
        let graceful = Arc::new(GracefulShutdown::new());
        let mut accept_tasks = Vec::new();
        for listener in self.http {
            accept_tasks.push(tokio::spawn(accept_loop(
                listener,
                executor.clone(),
                stop.clone(),
                graceful.clone(),
            )));
        }
        if let Some(endpoint) = self.http3.clone() {
            accept_tasks.push(tokio::spawn(webtransport::serve(endpoint, node.clone(), stop.clone())));
        }
        let mut grpc_tasks = Vec::new();
        let web = node.config.grpc_web.enabled.then(|| node.config.grpc_web.allowed_origins.clone());
        if let Some(listener) = self.grpc {
            let routes = tonic::service::Routes::new(ReceiveLimitStatus(GrpcApi::service(executor.clone())));
            let options = GrpcListener { web: web.clone(), client_facing: None };
            grpc_tasks.push(tokio::spawn(serve_grpc(listener, routes, options, stop.clone())));
        }
        for (listener, services) in self.client_grpc {
            let mut routes = tonic::service::RoutesBuilder::default();
            if services.uni {
                routes.add_service(ReceiveLimitStatus(UniStreamService::new(node.clone())));
            }
            if services.stream {
                routes.add_service(ClientStreamService::new(node.clone()));
            }
            let client = &node.config.client;
            let options = GrpcListener {
                // gRPC-web cannot carry the bidirectional stream, so only uni listeners get it.
                web: if services.uni { web.clone() } else { None },
                client_facing: Some(ClientFacing {
                    keepalive_interval: client.ping_interval.0.max(Duration::from_secs(1)),
                    keepalive_timeout: client.pong_timeout.0.max(Duration::from_secs(1)),
                }),
            };
            grpc_tasks.push(tokio::spawn(serve_grpc(listener, routes.routes(), options, stop.clone())));
        }

        shutdown.await;
        tracing::info!("shutting down: closing connections with 3001");
        stop.cancel();
        for task in accept_tasks {
            let _ = task.await;
        }
        node.disconnect_all();
        node.tasks.close();
        let timeout = node.config.shutdown.timeout.0;
        let deadline = tokio::time::Instant::now() + timeout;
        let drained = tokio::time::timeout_at(deadline, async {
            node.tasks.wait().await;
            match Arc::try_unwrap(graceful) {
                Ok(graceful) => graceful.shutdown().await,
                Err(_) => tracing::warn!("HTTP connections still referenced: skipping their graceful close"),
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(?timeout, "shutdown timeout reached with connections still open");
        }
        if let Some(endpoint) = self.http3 {
            webtransport::close(endpoint, deadline).await;
        }
        // One deadline for the whole drain: servers still running after it are cut off.
        for mut task in grpc_tasks {
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(Ok(Err(error))) => tracing::warn!(%error, "gRPC server error"),
                Err(_) => {
                    tracing::warn!("gRPC server did not stop in time");
                    task.abort();
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Streams one HTTP/2 connection may open on a client-facing listener: each is a session, and
/// a WebSocket client pays a TCP connection for the same.
const MAX_STREAMS_PER_CONNECTION: u32 = 128;

/// How one gRPC listener is served.
struct GrpcListener {
    /// gRPC-web, with CORS for these origin patterns.
    web: Option<Vec<String>>,
    /// Set for listeners serving client sessions.
    client_facing: Option<ClientFacing>,
}

/// Limits for listeners whose streams are client sessions.
struct ClientFacing {
    /// HTTP/2 pings notice a vanished peer; uni sessions expect no pong to do it for them.
    keepalive_interval: Duration,
    keepalive_timeout: Duration,
}

/// Serves gRPC on `listener` until `stop`.
async fn serve_grpc(
    listener: TcpListener,
    routes: tonic::service::Routes,
    options: GrpcListener,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut builder = tonic::transport::Server::builder();
    if let Some(client) = &options.client_facing {
        builder = builder
            .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
            .http2_keepalive_interval(Some(client.keepalive_interval))
            .http2_keepalive_timeout(Some(client.keepalive_timeout));
    }
    let Some(allowed_origins) = options.web else {
        return builder
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
            .await;
    };
    // gRPC-web from fetch() arrives over HTTP/1.1 as often as over HTTP/2.
    builder
        .accept_http1(true)
        .layer(grpc_web_cors(&allowed_origins))
        .layer(tonic_web::GrpcWebLayer::new())
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await
}

/// CORS for gRPC-web: the headers gRPC-web clients (grpc-web, Connect's gRPC-web transport)
/// send and read.
fn grpc_web_cors(allowed_origins: &[String]) -> CorsLayer {
    let allowed = allowed_origins.to_vec();
    let header = |name: &'static str| http::HeaderName::from_static(name);
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin, _| {
            origin.to_str().is_ok_and(|origin| crate::transport::origin_allowed(Some(origin), &allowed))
        }))
        .allow_methods([http::Method::POST, http::Method::OPTIONS])
        .allow_headers([
            header("content-type"),
            header("x-grpc-web"),
            header("x-user-agent"),
            header("grpc-timeout"),
            header("authorization"),
            header("x-centrifugo-error-mode"),
        ])
        .expose_headers([header("grpc-status"), header("grpc-message"), header("grpc-status-details-bin")])
        .max_age(std::time::Duration::from_secs(300))
}

async fn accept_loop(
    http: HttpListener,
    executor: Executor,
    stop: CancellationToken,
    graceful: Arc<GracefulShutdown>,
) {
    let HttpListener { listener, routes, tls } = http;
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let builder = Builder::new(TokioExecutor::new());
    loop {
        let (stream, _peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Typically EMFILE: back off briefly instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(acceptor) = &acceptor else {
            // Requests carry a second handle to the socket (see `transport::tcp`).
            let socket = SharedTcp::new(stream);
            let (executor, attached) = (executor.clone(), socket.clone());
            let service = service_fn(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(attached.clone());
                let executor = executor.clone();
                async move { Ok::<_, Infallible>(route(request, &executor, routes).await) }
            });
            let connection =
                builder.serve_connection_with_upgrades(TokioIo::new(socket), service).into_owned();
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "HTTP connection error");
                }
            });
            continue;
        };
        let executor = executor.clone();
        let service = service_fn(move |request| {
            let executor = executor.clone();
            async move { Ok::<_, Infallible>(route(request, &executor, routes).await) }
        });
        // The handshake runs in the connection's task so a slow client cannot stall accepting;
        // only a watcher (not the shared handle) goes along, so shutdown can still take it.
        let handshake = acceptor.accept(stream);
        let (builder, watcher, stop) = (builder.clone(), graceful.watcher(), stop.clone());
        tokio::spawn(async move {
            let handshake = tokio::select! {
                _ = stop.cancelled() => return,
                handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake) => handshake,
            };
            let stream = match handshake {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => return tracing::debug!(%error, "TLS handshake failed"),
                Err(_) => return tracing::debug!("TLS handshake timed out"),
            };
            let connection =
                builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
            if let Err(error) = watcher.watch(connection).await {
                tracing::debug!(%error, "HTTPS connection error");
            }
        });
    }
}

fn not_found() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"404 page not found")));
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

/// Whether `path` is the endpoint configured as `prefix` (a trailing `/` is ignored).
fn is_endpoint(path: &str, prefix: &str) -> bool {
    path == prefix.trim_end_matches('/')
}

async fn route(request: Request<Incoming>, executor: &Executor, routes: Routes) -> Response<ResponseBody> {
    let node = executor.node();
    let config = &node.config;
    let path = request.uri().path().to_owned();
    if routes.external {
        if !config.websocket.disabled && is_endpoint(&path, &config.websocket.handler_prefix) {
            return websocket::upgrade(request, node.clone()).map(BodyExt::boxed_unsync);
        }
        if config.uni_websocket.enabled && is_endpoint(&path, &config.uni_websocket.handler_prefix) {
            return websocket::upgrade_unidirectional(request, node.clone()).map(BodyExt::boxed_unsync);
        }
        if config.http_stream.enabled && is_endpoint(&path, &config.http_stream.handler_prefix) {
            return http_stream::http_stream(request, node.clone()).await;
        }
        if config.sse.enabled && is_endpoint(&path, &config.sse.handler_prefix) {
            return http_stream::sse(request, node.clone()).await;
        }
        if (config.http_stream.enabled || config.sse.enabled)
            && is_endpoint(&path, &config.emulation.handler_prefix)
        {
            return http_stream::emulation(request, node.clone()).await;
        }
        if config.uni_http_stream.enabled && is_endpoint(&path, &config.uni_http_stream.handler_prefix) {
            return http_stream::uni_http_stream(request, node.clone()).await;
        }
        if config.uni_sse.enabled && is_endpoint(&path, &config.uni_sse.handler_prefix) {
            return http_stream::uni_sse(request, node.clone()).await;
        }
    }
    route_api(request, executor, routes, &path).await.map(BodyExt::boxed_unsync)
}

/// Health and the HTTP server API.
async fn route_api(
    request: Request<Incoming>,
    executor: &Executor,
    routes: Routes,
    path: &str,
) -> Response<Full<Bytes>> {
    let node = executor.node();
    let config = &node.config;
    if routes.internal && config.health.enabled && is_endpoint(path, &config.health.handler_prefix) {
        // 200 `{}` while the engines answer; 500 with the failing parts (Centrifugo's shape)
        // while they do not, so a load balancer can route around a node cut off from Redis.
        let problems = node.health_problems();
        let (status, body) = if problems.is_empty() {
            (http::StatusCode::OK, Bytes::from_static(b"{}"))
        } else {
            let body = serde_json::json!({ "errors": problems }).to_string();
            (http::StatusCode::INTERNAL_SERVER_ERROR, Bytes::from(body))
        };
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        return response;
    }
    if (routes.internal || config.http_api.external) && !config.http_api.disabled {
        {
            let prefix = config.http_api.handler_prefix.trim_end_matches('/');
            if path == prefix {
                return crate::api::http::serve(request, executor, None).await;
            }
            if let Some(method) = path.strip_prefix(prefix).and_then(|rest| rest.strip_prefix('/')) {
                let method = method.to_owned();
                return crate::api::http::serve(request, executor, Some(&method)).await;
            }
        }
    }
    not_found()
}
