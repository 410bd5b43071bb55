//! The gRPC listeners: the server API (`grpc_api`) and the client-facing ones (`uni_grpc`,
//! `grpc_stream`, one listener when they share an address), with tonic-web and CORS where
//! `grpc_web.enabled`.

use std::time::Duration;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::gate::{self, Gate};
use crate::api::Executor;
use crate::api::grpc::{GrpcApi, TracedApi};
use crate::node::Node;
use crate::transport::grpc::{ClientStreamService, ReceiveLimitStatus, UniStreamService};
use crate::transport::origin_allowed;

/// Streams one HTTP/2 connection may open on a client-facing listener: each is a session, and
/// a WebSocket client pays a TCP connection for the same.
const MAX_STREAMS_PER_CONNECTION: u32 = 128;
/// The server API's listener: concurrent calls per connection, and its HTTP/2 keep-alive.
const API_STREAMS_PER_CONNECTION: u32 = 256;
const API_KEEPALIVE: Duration = Duration::from_secs(20);

/// A bound gRPC listener and the TLS it terminates, when configured.
#[derive(Debug)]
pub(super) struct GrpcSocket {
    pub listener: TcpListener,
    pub tls: Option<tonic::transport::ServerTlsConfig>,
}

/// How long an unauthenticated peer may take over the TLS handshake.
pub(super) const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which client streaming services a client-facing gRPC listener serves.
#[derive(Debug, Clone, Copy)]
pub(super) struct ClientGrpc {
    pub uni: bool,
    pub stream: bool,
}

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

type ServeResult = Result<(), tonic::transport::Error>;

/// Starts the server API's gRPC listener.
pub(super) fn spawn_api(
    socket: GrpcSocket,
    gate: Arc<Gate>,
    executor: Executor,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<ServeResult> {
    let node = executor.node().clone();
    let mut routes = tonic::service::RoutesBuilder::default();
    let api = GrpcApi::service(executor);
    match node.tracer.clone().filter(|_| node.config.opentelemetry.api) {
        Some(tracer) => routes.add_service(ReceiveLimitStatus(TracedApi::new(api, tracer))),
        None => routes.add_service(ReceiveLimitStatus(api)),
    };
    if node.config.grpc_api.reflection {
        // For tools like grpcurl: the server API's services, described from its .proto, under
        // both versions of the reflection service (as Go's `reflection.Register`).
        let builder = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(crate::proto::reflection::API_FILE_DESCRIPTOR_SET)
        };
        routes.add_service(builder().build_v1().expect("the generated descriptor set decodes"));
        routes.add_service(builder().build_v1alpha().expect("the generated descriptor set decodes"));
    }
    let routes = routes.routes();
    let options = GrpcListener { web: web_origins(&node), client_facing: None };
    tokio::spawn(serve(socket, gate, routes, options, stop))
}

/// Starts one client-facing gRPC listener.
pub(super) fn spawn_client(
    socket: GrpcSocket,
    services: ClientGrpc,
    gate: Arc<Gate>,
    node: &Arc<Node>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<ServeResult> {
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
        web: if services.uni { web_origins(node) } else { None },
        client_facing: Some(ClientFacing {
            keepalive_interval: client.ping_interval.0.max(Duration::from_secs(1)),
            keepalive_timeout: client.pong_timeout.0.max(Duration::from_secs(1)),
        }),
    };
    tokio::spawn(serve(socket, gate, routes.routes(), options, stop))
}

fn web_origins(node: &Node) -> Option<Vec<String>> {
    node.config.grpc_web.enabled.then(|| node.config.grpc_web.allowed_origins.clone())
}

/// Serves gRPC on `listener` until `stop`, its sockets admitted by `gate` (caps, and a
/// deadline for the first bytes: h2's preface wait has none).
async fn serve(
    socket: GrpcSocket,
    gate: Arc<Gate>,
    routes: tonic::service::Routes,
    options: GrpcListener,
    stop: CancellationToken,
) -> ServeResult {
    let incoming = gate::incoming(socket.listener, gate, stop.clone());
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = socket.tls {
        builder = builder.tls_config(tls)?;
    }
    builder = match &options.client_facing {
        Some(client) => builder
            .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
            .http2_keepalive_interval(Some(client.keepalive_interval))
            .http2_keepalive_timeout(Some(client.keepalive_timeout)),
        None => builder
            .max_concurrent_streams(Some(API_STREAMS_PER_CONNECTION))
            .http2_keepalive_interval(Some(API_KEEPALIVE))
            .http2_keepalive_timeout(Some(API_KEEPALIVE)),
    };
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
            origin.to_str().is_ok_and(|origin| origin_allowed(Some(origin), &allowed))
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
        .max_age(Duration::from_secs(300))
}
