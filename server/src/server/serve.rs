//! Serving and draining: the accept loops of the HTTP listeners (plain TCP and TLS), and the
//! shutdown sequence: stop accepting → close every session with 3001 "shutdown" → wait for
//! sessions up to `shutdown.timeout` → stop the rest.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::routes::{Routes, route};
use super::{HttpListener, Server, grpc};
use crate::api::Executor;
use crate::node::Node;
use crate::transport::tcp::SharedTcp;
use crate::transport::webtransport;

/// How long a TLS client has to finish its handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (typically EMFILE) instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

type GrpcTask = tokio::task::JoinHandle<Result<(), tonic::transport::Error>>;

impl Server {
    /// Serves until `shutdown` resolves, then drains (see the module docs).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let node = self.node;
        let executor = Executor::new(node.clone());
        let stop = CancellationToken::new();
        let graceful = Arc::new(GracefulShutdown::new());
        let mut accept_tasks = Vec::new();
        for listener in self.http {
            let (executor, stop, graceful) = (executor.clone(), stop.clone(), graceful.clone());
            accept_tasks.push(tokio::spawn(accept_loop(listener, executor, stop, graceful)));
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
            grpc_tasks.push(grpc::spawn_api(socket, executor.clone(), stop.clone()));
        }
        for (socket, services) in self.client_grpc {
            grpc_tasks.push(grpc::spawn_client(socket, services, &node, stop.clone()));
        }

        shutdown.await;
        tracing::info!("shutting down: closing connections with 3001");
        stop.cancel();
        for task in accept_tasks {
            let _ = task.await;
        }
        let deadline = drain_sessions(&node, graceful).await;
        if let Some(endpoint) = self.http3 {
            webtransport::close(endpoint, deadline).await;
        }
        stop_grpc(grpc_tasks, deadline).await;
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

async fn accept_loop(
    http: HttpListener,
    executor: Executor,
    stop: CancellationToken,
    graceful: Arc<GracefulShutdown>,
) {
    let HttpListener { listener, routes, tls, h2c } = http;
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let builder = Builder::new(TokioExecutor::new());
    loop {
        let (stream, _peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        match &acceptor {
            None => serve_plain(stream, h2c, &builder, &executor, routes, &graceful),
            Some(acceptor) => serve_tls(stream, acceptor, &builder, &executor, routes, &graceful, &stop),
        }
    }
}

/// A plain TCP connection: requests carry a second handle to the socket (see
/// [`crate::transport::tcp`]). Prior-knowledge HTTP/2 is served only where `h2c` says so
/// (`http_server.h2c_external`); elsewhere a connection opening with the HTTP/2 preface is
/// closed, as an HTTP/1.1-only server would refuse it.
fn serve_plain(
    stream: TcpStream,
    h2c: bool,
    builder: &Builder<TokioExecutor>,
    executor: &Executor,
    routes: Routes,
    graceful: &GracefulShutdown,
) {
    let (builder, executor, watcher) = (builder.clone(), executor.clone(), graceful.watcher());
    tokio::spawn(async move {
        if !h2c && opens_with_http2_preface(&stream).await {
            return;
        }
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

/// Whether the client's first bytes are HTTP/2's connection preface (`PRI * HTTP/2.0`), which
/// no HTTP/1 request starts with.
async fn opens_with_http2_preface(stream: &TcpStream) -> bool {
    let mut first = [0u8; 4];
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(4)) => &first == b"PRI ",
        _ => false,
    }
}

/// A TLS connection. The handshake runs in the connection's task so a slow client cannot
/// stall accepting; only a watcher (not the shared handle) goes along, so shutdown can still
/// take it.
fn serve_tls(
    stream: TcpStream,
    acceptor: &tokio_rustls::TlsAcceptor,
    builder: &Builder<TokioExecutor>,
    executor: &Executor,
    routes: Routes,
    graceful: &GracefulShutdown,
    stop: &CancellationToken,
) {
    let executor = executor.clone();
    let service = service_fn(move |request| {
        let executor = executor.clone();
        async move { Ok::<_, Infallible>(route(request, &executor, routes).await) }
    });
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
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
        if let Err(error) = watcher.watch(connection).await {
            tracing::debug!(%error, "HTTPS connection error");
        }
    });
}
