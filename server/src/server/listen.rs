//! Binding: every listener the config asks for, opened before anything is served so a port
//! conflict fails fast and tests can read the bound addresses.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use super::autocert;
use super::grpc::{ClientGrpc, GrpcSocket, TLS_HANDSHAKE_TIMEOUT};
use super::routes::Routes;
use super::{HttpListener, Server};
use crate::config::{Config, HttpServer, Tls, read_pem_source};
use crate::node::Node;
use crate::tls;
use crate::transport::webtransport;

/// Listen backlog for every TCP listener (bursts of reconnecting clients must not be dropped).
const LISTEN_BACKLOG: u32 = 4096;
/// Linux's "address family not supported" (no IPv6 in the kernel).
const EAFNOSUPPORT: i32 = 97;

/// The host a listener binds for a configured address. Empty means every interface, IPv6 and
/// IPv4 alike (as Go's `:port` does): browsers try `localhost` as `::1` first, and QUIC does
/// not fall back to IPv4 the way TCP connection racing does.
pub(super) fn listen_host(address: &str) -> &str {
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

fn bind_tcp(address: &str, port: u16) -> anyhow::Result<TcpListener> {
    let socket = bind_socket(address, port, socket2::Type::STREAM)?;
    socket.listen(LISTEN_BACKLOG as i32)?;
    Ok(TcpListener::from_std(socket.into())?)
}

/// `http_server.internal_port` as a number, when set.
fn internal_port(server: &HttpServer) -> anyhow::Result<Option<u16>> {
    if server.internal_port.is_empty() {
        return Ok(None);
    }
    let port = server.internal_port.parse().context("http_server.internal_port must be a port number")?;
    Ok(Some(port))
}

impl Server {
    /// Binds the configured listeners.
    pub fn bind(node: Arc<Node>) -> anyhow::Result<Self> {
        let autocert = bind_autocert(&node.config.http_server)?;
        let (http, http3) = bind_http(&node, autocert.as_ref().map(|(autocert, _)| autocert.store()))?;
        let config = &node.config;
        let grpc = if config.grpc_api.enabled {
            let api = &config.grpc_api;
            Some(GrpcSocket {
                listener: bind_tcp(&api.address, api.port)?,
                tls: grpc_tls("grpc_api.tls", &api.tls)?,
            })
        } else {
            None
        };
        let client_grpc = bind_client_grpc(config)?;
        let gate = super::gate::Gate::new(&node.config.http_server);
        Ok(Self { node, http, grpc, client_grpc, http3, autocert, gate })
    }
}

/// The external HTTP listener (with its HTTP/3 side), and the internal one when the API and
/// health live on another address or port.
fn bind_http(
    node: &Node,
    autocert: Option<Arc<autocert::CertStore>>,
) -> anyhow::Result<(Vec<HttpListener>, Option<quinn::Endpoint>)> {
    let server = &node.config.http_server;
    let internal_port = internal_port(server)?;
    let separate_internal = internal_port.is_some_and(|p| p != server.port)
        || (!server.internal_address.is_empty() && server.internal_address != server.address);
    let external_tls = match &autocert {
        Some(store) => {
            let alpn = [tls::TCP_ALPN, &[autocert::ACME_TLS_ALPN]].concat();
            Some(tls::resolver_config(store.clone(), &alpn, false))
        }
        None if server.tls.enabled => {
            Some(tls::server_config("http_server.tls", &server.tls, tls::TCP_ALPN, false)?)
        }
        None => None,
    };
    let external = bind_tcp(&server.address, server.port)?;
    let http3 = if server.http3.enabled {
        // Same address and port number over UDP (the TCP port, when the system chose it).
        let port = external.local_addr()?.port();
        let udp = bind_socket(&server.address, port, socket2::Type::DGRAM)?;
        let quic_tls = match &autocert {
            Some(store) => tls::resolver_config(store.clone(), tls::H3_ALPN, true),
            None => tls::server_config("http_server.tls", &server.tls, tls::H3_ALPN, true)?,
        };
        Some(webtransport::bind(udp.into(), quic_tls, node)?)
    } else {
        None
    };
    let mut http = vec![HttpListener {
        listener: external,
        routes: Routes { external: true, internal: !separate_internal },
        h2c: server.h2c_external && external_tls.is_none(),
        tls: external_tls.clone(),
    }];
    if separate_internal {
        let address =
            if server.internal_address.is_empty() { &server.address } else { &server.internal_address };
        let internal_tls = if server.internal_tls.enabled {
            let key = "http_server.internal_tls";
            Some(tls::server_config(key, &server.internal_tls, tls::TCP_ALPN, false)?)
        } else if server.tls_external {
            None
        } else {
            external_tls
        };
        http.push(HttpListener {
            listener: bind_tcp(address, internal_port.unwrap_or(server.port))?,
            routes: Routes { external: false, internal: true },
            tls: internal_tls,
            h2c: false,
        });
    }
    Ok((http, http3))
}

/// `tls_autocert`: the certificate keeper (with what `cache_dir` holds) and, with `http`, the
/// HTTP-01 listener on `http_addr` (`host:port`, an empty host meaning every address).
fn bind_autocert(
    server: &HttpServer,
) -> anyhow::Result<Option<(Arc<autocert::Autocert>, Option<TcpListener>)>> {
    let settings = &server.tls_autocert;
    if !settings.enabled {
        return Ok(None);
    }
    let keeper = Arc::new(autocert::Autocert::new(settings)?);
    let http = if settings.http {
        let (host, port) = settings
            .http_addr
            .rsplit_once(':')
            .context("http_server.tls_autocert.http_addr: expected host:port")?;
        let port = port.parse().context("http_server.tls_autocert.http_addr: not a port")?;
        Some(bind_tcp(host, port)?)
    } else {
        None
    };
    Ok(Some((keeper, http)))
}

/// The client-facing gRPC listeners: one when `uni_grpc` and `grpc_stream` share an address.
fn bind_client_grpc(config: &Config) -> anyhow::Result<Vec<(GrpcSocket, ClientGrpc)>> {
    let mut client_grpc = Vec::new();
    let (uni, stream) = (&config.uni_grpc, &config.grpc_stream);
    let same_host = listen_host(&uni.address) == listen_host(&stream.address);
    let shared = uni.enabled && stream.enabled && same_host && uni.port == stream.port;
    if shared && stream.tls.enabled && !uni.tls.enabled {
        anyhow::bail!("grpc_stream.tls: grpc_stream shares uni_grpc's listener, whose TLS is uni_grpc.tls");
    }
    if uni.enabled {
        let socket = GrpcSocket {
            listener: bind_tcp(&uni.address, uni.port)?,
            tls: grpc_tls("uni_grpc.tls", &uni.tls)?,
        };
        client_grpc.push((socket, ClientGrpc { uni: true, stream: shared }));
    }
    if stream.enabled && !shared {
        let listener = bind_tcp(&stream.address, stream.port)?;
        let socket = GrpcSocket { listener, tls: grpc_tls("grpc_stream.tls", &stream.tls)? };
        client_grpc.push((socket, ClientGrpc { uni: false, stream: true }));
    }
    Ok(client_grpc)
}

/// TLS for a gRPC listener (ALPN h2, client certificates checked against `client_ca_pem` when
/// set), read now so a bad certificate stops startup rather than the first handshake.
fn grpc_tls(section: &str, tls: &Tls) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    if !tls.enabled {
        return Ok(None);
    }
    // Parse once with rustls so key/certificate mismatches are reported by name.
    tls::server_config(section, tls, &[b"h2"], false)?;
    let cert = read_pem_source(&format!("{section}.cert_pem"), &tls.cert_pem)?;
    let key = read_pem_source(&format!("{section}.key_pem"), &tls.key_pem)?;
    let mut config =
        ServerTlsConfig::new().identity(Identity::from_pem(cert, key)).timeout(TLS_HANDSHAKE_TIMEOUT);
    if !tls.client_ca_pem.trim().is_empty() {
        let ca = read_pem_source(&format!("{section}.client_ca_pem"), &tls.client_ca_pem)?;
        config = config.client_ca_root(Certificate::from_pem(ca));
    }
    Ok(Some(config))
}
