//! Serving and draining: the accept loops of the HTTP listeners (plain TCP and TLS), the
//! consumers, and the shutdown sequence: stop accepting → consumers finish the command in
//! flight → close every session with 3001 "shutdown" → wait for sessions up to
//! `shutdown.timeout` → deliver the queued lifecycle events → stop the rest.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::gate::{self, Gate, Pass};
use super::routes::{Routes, route};
use super::{HttpListener, Server, grpc};
use crate::api::Executor;
use crate::consumer::Consumers;
use crate::node::Node;
use crate::transport::tcp::SharedTcp;
use crate::transport::webtransport;

/// How long a TLS client has to finish its handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 connections are pinged this often, and closed when a ping goes unanswered this long.
const H2_KEEPALIVE: Duration = Duration::from_secs(20);
/// Concurrent streams per HTTP/2 connection.
const H2_MAX_STREAMS: u32 = 256;

type GrpcTask = tokio::task::JoinHandle<Result<(), tonic::transport::Error>>;

impl Server {
    /// Serves until `shutdown` resolves, then drains (see the module docs).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let node = self.node;
        let executor = Executor::new(node.clone());
        let stop = CancellationToken::new();
        let graceful = Arc::new(GracefulShutdown::new());
        let mut accept_tasks = Vec::new();
        let gate = self.gate;
        for listener in self.http {
            let (executor, stop, graceful) = (executor.clone(), stop.clone(), graceful.clone());
            accept_tasks.push(tokio::spawn(accept_loop(listener, gate.clone(), executor, stop, graceful)));
        }
        if let Some(endpoint) = self.http3.clone() {
            accept_tasks.push(tokio::spawn(webtransport::serve(endpoint, node.clone(), stop.clone())));
        }
        if let Some((keeper, http01)) = self.autocert {
            let store = keeper.store();
            accept_tasks.push(tokio::spawn(keeper.run(stop.clone())));
            if let Some(listener) = http01 {
                accept_tasks.push(tokio::spawn(super::autocert::serve_http01(listener, store, stop.clone())));
            }
        }
        let mut grpc_tasks = Vec::new();
        if let Some(socket) = self.grpc {
            grpc_tasks.push(grpc::spawn_api(socket, gate.clone(), executor.clone(), stop.clone()));
        }
        for (socket, services) in self.client_grpc {
            grpc_tasks.push(grpc::spawn_client(socket, services, gate.clone(), &node, stop.clone()));
        }

        let consumers = Consumers::start(&node.config.consumers, &executor).await?;

        shutdown.await;
        tracing::info!("shutting down: closing connections with 3001");
        stop.cancel();
        for task in accept_tasks {
            let _ = task.await;
        }
        // Their last commands still reach the clients, which are disconnected next.
        consumers.stop(tokio::time::Instant::now() + node.config.shutdown.timeout.0).await;
        let deadline = drain_sessions(&node, graceful).await;
        if let Some(lifecycle) = &node.lifecycle {
            // The sessions' 3001 disconnects are queued now; they get the drain's deadline, and
            // at least 2 s even when the sessions used it all.
            lifecycle.drain(deadline.max(tokio::time::Instant::now() + Duration::from_secs(2))).await;
        }
        if let Some(endpoint) = self.http3 {
            webtransport::close(endpoint, deadline).await;
        }
        stop_grpc(grpc_tasks, deadline).await;
        if let Some(tracer) = &node.tracer {
            // Spans of the last requests; Centrifugo loses those still batched.
            tracer.flush(std::time::Duration::from_secs(2)).await;
        }
        let (open, refused, silent) = gate.counts();
        tracing::info!(
            open,
            refused,
            silent,
            "stopped; sockets refused by a connection cap or closed for silence"
        );
        Ok(())
    }
}

/// Closes every session with 3001 and waits, up to `shutdown.timeout`, for the session tasks
/// and the HTTP connections. Returns the drain's deadline, which the rest shares.
async fn drain_sessions(node: &Node, graceful: Arc<GracefulShutdown>) -> tokio::time::Instant {
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
    deadline
}

/// One deadline for the whole drain: gRPC servers still running after it are cut off.
async fn stop_grpc(tasks: Vec<GrpcTask>, deadline: tokio::time::Instant) {
    for mut task in tasks {
        match tokio::time::timeout_at(deadline, &mut task).await {
            Ok(Ok(Err(error))) => tracing::warn!(%error, "gRPC server error"),
            Err(_) => {
                tracing::warn!("gRPC server did not stop in time");
                task.abort();
            }
            _ => {}
        }
    }
}

/// The HTTP/1.1 and HTTP/2 settings every HTTP listener shares: a header deadline (which also
/// closes idle keep-alive connections) and HTTP/2 keep-alive pings and stream limits.
fn http_builder(header_read_timeout: Duration) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEPALIVE)
        .keep_alive_timeout(H2_KEEPALIVE)
        .max_concurrent_streams(H2_MAX_STREAMS);
    builder
}

async fn accept_loop(
    http: HttpListener,
    gate: Arc<Gate>,
    executor: Executor,
    stop: CancellationToken,
    graceful: Arc<GracefulShutdown>,
) {
    let HttpListener { listener, routes, tls, h2c } = http;
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let builder = http_builder(gate.header_read_timeout);
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = gate::accept(&listener) => accepted,
        };
        let Some(pass) = gate.admit(peer.ip()) else {
            if acceptor.is_none() {
                gate::refuse_http(stream);
            }
            continue;
        };
        let connection = Connection {
            pass,
            gate: gate.clone(),
            builder: builder.clone(),
            executor: executor.clone(),
            routes,
        };
        match &acceptor {
            None => serve_plain(stream, h2c, connection, &graceful),
            Some(acceptor) => serve_tls(stream, acceptor, connection, &graceful, &stop),
        }
    }
}

/// What serving one accepted connection needs.
struct Connection {
    pass: Pass,
    gate: Arc<Gate>,
    builder: Builder<TokioExecutor>,
    executor: Executor,
    routes: Routes,
}

/// A plain TCP connection: requests carry a second handle to the socket (see
/// [`crate::transport::tcp`]). The client's first bytes pick the protocol, so hyper never sniffs
/// (which has no deadline): prior-knowledge HTTP/2 where `h2c` allows it
/// (`http_server.h2c_external`), else such a connection is closed, as an HTTP/1.1-only server
/// would refuse it.
fn serve_plain(stream: TcpStream, h2c: bool, connection: Connection, graceful: &GracefulShutdown) {
    let watcher = graceful.watcher();
    tokio::spawn(async move {
        let Connection { pass: _pass, gate, builder, executor, routes } = connection;
        let Some(first) = gate.first_bytes(&stream).await else { return };
        let http2 = first.starts_with(b"PRI ");
        if http2 && !h2c {
            return;
        }
        let builder = if http2 { builder.http2_only() } else { builder.http1_only() };
        let socket = SharedTcp::new(stream);
        let attached = socket.clone();
        let service = service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(attached.clone());
            let executor = executor.clone();
            async move { Ok::<_, Infallible>(route(request, &executor, routes).await) }
        });
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(socket), service).into_owned();
        if let Err(error) = watcher.watch(connection).await {
            tracing::debug!(%error, "HTTP connection error");
        }
    });
}

/// A TLS connection. The handshake runs in the connection's task so a slow client cannot
/// stall accepting; only a watcher (not the shared handle) goes along, so shutdown can still
/// take it.
fn serve_tls(
    stream: TcpStream,
    acceptor: &tokio_rustls::TlsAcceptor,
    connection: Connection,
    graceful: &GracefulShutdown,
    stop: &CancellationToken,
) {
    let Connection { pass, gate: _, builder, executor, routes } = connection;
    let service = service_fn(move |request| {
        let executor = executor.clone();
        async move { Ok::<_, Infallible>(route(request, &executor, routes).await) }
    });
    let handshake = acceptor.accept(stream);
    let (watcher, stop) = (graceful.watcher(), stop.clone());
    tokio::spawn(async move {
        let _pass = pass;
        let handshake = tokio::select! {
            _ = stop.cancelled() => return,
            handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake) => handshake,
        };
        let stream = match handshake {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return tracing::debug!(%error, "TLS handshake failed"),
            Err(_) => return tracing::debug!("TLS handshake timed out"),
        };
        // ALPN picks the protocol, so hyper never sniffs.
        let http2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let builder = if http2 { builder.http2_only() } else { builder.http1_only() };
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
        if let Err(error) = watcher.watch(connection).await {
            tracing::debug!(%error, "HTTPS connection error");
        }
    });
}
