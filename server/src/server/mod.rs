//! The composition of the edges: listeners, HTTP routing and the shutdown sequence.
//!
//! [`Server::bind`] opens every listener first (so a port conflict fails fast and tests can read
//! the bound addresses); [`Server::serve`] then runs until the shutdown future resolves and
//! drains: stop accepting → close every session with 3001 "shutdown" → wait for sessions up to
//! `shutdown.timeout` → stop.
//!
//! Routes on the external port: the client transports, and — unless
//! `http_server.internal_port` moves them to a second listener — the HTTP API, `/health`,
//! `/metrics` and the admin UI.
//! With `http_server.tls` the listeners speak HTTPS (the internal one too, unless
//! `tls_external` or its own `internal_tls`); with `http_server.http3` the external port's UDP
//! side serves WebTransport.
//!
//! - `listen.rs`: binding (addresses, dual-stack, backlog, TLS configs);
//! - `routes.rs`: which endpoint a request reaches, `/health` and `/metrics`;
//! - `admin.rs`: the admin UI, its login and its API (assets embedded from `admin_ui/`);
//! - `gate.rs`: admission at the socket (connection caps, a deadline for the first bytes);
//! - `grpc.rs`: the gRPC listeners;
//! - `serve.rs`: accept loops, serving, and the drain.

mod admin;
mod autocert;
mod gate;
mod grpc;
mod listen;
mod routes;
mod serve;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::node::Node;
use grpc::{ClientGrpc, GrpcSocket};
use routes::Routes;

/// One bound HTTP listener.
#[derive(Debug)]
struct HttpListener {
    listener: TcpListener,
    routes: Routes,
    /// Serve HTTPS (and WSS) with this config.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// A plain listener that also speaks prior-knowledge HTTP/2 (`http_server.h2c_external`);
    /// other plain listeners are HTTP/1.1 only, as Centrifugo's.
    h2c: bool,
}

/// Bound listeners, ready to serve.
#[derive(Debug)]
pub struct Server {
    node: Arc<Node>,
    http: Vec<HttpListener>,
    grpc: Option<GrpcSocket>,
    client_grpc: Vec<(GrpcSocket, ClientGrpc)>,
    /// HTTP/3 (WebTransport) on the external port's UDP side.
    http3: Option<quinn::Endpoint>,
    /// `tls_autocert`: the certificates' keeper, and its HTTP-01 listener when `http` is on.
    autocert: Option<(Arc<autocert::Autocert>, Option<TcpListener>)>,
    /// Connection caps shared by every TCP listener.
    gate: Arc<gate::Gate>,
}

impl Server {
    /// Address of the listener serving the unidirectional gRPC stream, when enabled.
    pub fn uni_grpc_addr(&self) -> Option<SocketAddr> {
        self.client_grpc.iter().find(|(_, s)| s.uni).map(|(g, _)| g.listener.local_addr().expect("bound"))
    }

    /// Address of the listener serving the bidirectional gRPC client stream, when enabled.
    pub fn grpc_stream_addr(&self) -> Option<SocketAddr> {
        self.client_grpc.iter().find(|(_, s)| s.stream).map(|(g, _)| g.listener.local_addr().expect("bound"))
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
        self.grpc.as_ref().map(|g| g.listener.local_addr().expect("bound listener has an address"))
    }
}
