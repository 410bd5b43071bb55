//! WebTransport at `/connection/webtransport`: HTTP/3 over QUIC (quinn, h3, h3-webtransport)
//! on the UDP side of the external port. A thin adapter like the others: it accepts the
//! session, takes the one bidirectional stream the client opens, and pumps the client
//! protocol over it.
//!
//! The stream is a byte stream, not messages: [`Deframer`] cuts it into command frames (JSON
//! lines, or varint-delimited Protobuf when the CONNECT URL has `cf_protocol=protobuf`), and
//! outbound batches are written with the same framing. A message over
//! `webtransport.message_size_limit`, or a broken length prefix, ends the session with 3501
//! (a reconnect would only resend it).
//!
//! Disconnects go out as a `disconnect` push on the stream; the stream is then finished, the
//! client gets [`CLOSE_GRACE`] to close, and the QUIC connection is closed with the reason.
//! (h3-webtransport keeps the CONNECT stream to itself, so no CLOSE_WEBTRANSPORT_SESSION
//! capsule carries the code; SDKs act on the push, as they do for Centrifugo.)

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures_util::{Stream, stream};
use h3::ext::Protocol;
use h3::quic::BidiStream as _;
use h3_webtransport::server::{AcceptedBi, WebTransportSession};
use http::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::origin_allowed;
use super::outgoing::{Outgoing, Shape};
use crate::errors::Disconnect;
use crate::node::Node;
use crate::protocol::ProtocolType;
use crate::protocol::framing::Framing;
use crate::protocol::stream_framing::{DeframeError, Deframer};
use crate::session::{Direction, Inbound, Session, TransportInfo};

type Session3 = WebTransportSession<h3_quinn::Connection, Bytes>;

/// From accepting a QUIC connection to an accepted WebTransport session (QUIC handshake,
/// HTTP/3 settings, the CONNECT request and our response).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the client has to open its stream after the session is accepted (Centrifugo's).
const STREAM_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the client has to close after the disconnect push, before the server closes.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Bytes read from the stream at a time.
const READ_CHUNK: usize = 4096;
/// HTTP/3's "no error" application code, for closing the QUIC connection.
const H3_NO_ERROR: u32 = 0x100;

/// QUIC connections served at once; more are refused at the handshake. A QUIC connection costs
/// no file descriptor, so this is the bound the fd limit gives TCP transports for free.
const MAX_CONNECTIONS: usize = 20_000;
/// Bytes a peer may have in flight per stream beyond one maximal message, and QUIC datagrams
/// buffered (WebTransport requires datagram support; nothing reads them).
const STREAM_WINDOW_SLACK: u32 = 16 * 1024;
const DATAGRAM_BUFFER: usize = 16 * 1024;
/// QUIC keep-alive, under the 30 s idle timeout browsers use, whatever `client.ping_interval`.
const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// Minimum time given to close packets at shutdown.
const CLOSE_FLUSH: Duration = Duration::from_millis(250);

/// Opens the QUIC endpoint for HTTP/3 on a bound UDP socket.
pub fn bind(
    socket: std::net::UdpSocket,
    tls: Arc<rustls::ServerConfig>,
    node: &Node,
) -> anyhow::Result<quinn::Endpoint> {
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(tls).context("the TLS config cannot serve QUIC")?;
    let mut transport = quinn::TransportConfig::default();
    // A browser needs the CONNECT stream, the session's stream and a few spares; HTTP/3 itself
    // opens three unidirectional streams. Flow-control windows bound what a peer can make us
    // buffer: one maximal message per stream, and twice that for the whole connection (quinn's
    // default connection window is unlimited).
    transport.max_concurrent_bidi_streams(8u32.into());
    transport.max_concurrent_uni_streams(8u32.into());
    let limit = u32::try_from(node.config.webtransport.message_size_limit).unwrap_or(u32::MAX / 4);
    let stream_window = limit.saturating_add(STREAM_WINDOW_SLACK);
    transport.stream_receive_window(stream_window.into());
    transport.receive_window(stream_window.saturating_mul(2).into());
    transport.datagram_receive_buffer_size(Some(DATAGRAM_BUFFER));
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    let idle =
        (node.config.client.ping_interval.0 + node.config.client.pong_timeout.0).max(Duration::from_secs(30));
    transport.max_idle_timeout(Some(idle.try_into().context("idle timeout out of range")?));
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    let runtime = Arc::new(quinn::TokioRuntime);
    quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(config), socket, runtime)
        .context("cannot start the QUIC endpoint")
}

/// Accepts QUIC connections until `stop`; each becomes at most one WebTransport session.
pub async fn serve(endpoint: quinn::Endpoint, node: Arc<Node>, stop: CancellationToken) {
    // Each connection task holds a clone: the count is the live connections plus one.
    let open = Arc::new(());
    loop {
        let incoming = tokio::select! {
            _ = stop.cancelled() => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        if Arc::strong_count(&open) > MAX_CONNECTIONS {
            incoming.refuse();
            continue;
        }
        node.tasks.spawn(connection(incoming, node.clone(), open.clone()));
    }
    // Refuse new handshakes; live sessions end through the node's shutdown.
    endpoint.set_server_config(None);
}

/// Closes the endpoint after the sessions drained (or the deadline passed), giving the close
/// packets a moment to leave even when the deadline is already past.
pub async fn close(endpoint: quinn::Endpoint, deadline: tokio::time::Instant) {
    endpoint.close(H3_NO_ERROR.into(), b"shutdown");
    let deadline = deadline.max(tokio::time::Instant::now() + CLOSE_FLUSH);
    let _ = tokio::time::timeout_at(deadline, endpoint.wait_idle()).await;
}

async fn connection(incoming: quinn::Incoming, node: Arc<Node>, _open: Arc<()>) {
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let quic = tokio::select! {
        _ = node.shutdown.cancelled() => return,
        connected = tokio::time::timeout_at(deadline, incoming) => match connected {
            Ok(Ok(connection)) => connection,
            Ok(Err(error)) => return tracing::debug!(%error, "QUIC handshake failed"),
            Err(_) => return tracing::debug!("QUIC handshake timed out"),
        },
    };
    // The whole HTTP/3 exchange up to an accepted session shares the handshake deadline.
    let accepted = tokio::select! {
        _ = node.shutdown.cancelled() => None,
        accepted = tokio::time::timeout_at(deadline, accept_session(quic.clone(), &node)) => {
            accepted.ok().flatten()
        }
    };
    let Some((session, protocol)) = accepted else {
        quic.close(H3_NO_ERROR.into(), b"");
        return;
    };
    serve_session(session, quic, node, protocol).await;
}

/// Runs HTTP/3 until the WebTransport CONNECT arrives; other requests get 404.
async fn accept_session(quic: quinn::Connection, node: &Node) -> Option<(Session3, ProtocolType)> {
    let mut builder = h3::server::builder();
    builder
        .enable_webtransport(true)
        .enable_extended_connect(true)
        .enable_datagram(true)
        .max_webtransport_sessions(1)
        .send_grease(true);
    let mut h3 = builder.build(h3_quinn::Connection::new(quic)).await.ok()?;
    loop {
        let resolver = h3.accept().await.ok()??;
        let Ok((request, mut stream)) = resolver.resolve_request().await else { continue };
        match check_connect(&request, node) {
            Ok(protocol) => {
                return match Session3::accept(request, stream, h3).await {
                    Ok(session) => Some((session, protocol)),
                    Err(error) => {
                        tracing::debug!(%error, "WebTransport session refused");
                        None
                    }
                };
            }
            Err(status) => {
                let response = Response::builder().status(status).body(()).expect("a status-only response");
                if stream.send_response(response).await.is_ok() {
                    let _ = stream.finish().await;
                }
            }
        }
    }
}

/// Checks a request on the HTTP/3 connection: the WebTransport CONNECT to our endpoint, from
/// an allowed origin, while not shutting down and within the connection limits (503). `Ok` is the protocol it asks for.
fn check_connect(request: &Request<()>, node: &Node) -> Result<ProtocolType, StatusCode> {
    let config = &node.config;
    let is_webtransport = request.method() == Method::CONNECT
        && request.extensions().get::<Protocol>() == Some(&Protocol::WEB_TRANSPORT);
    let prefix = config.webtransport.handler_prefix.trim_end_matches('/');
    if !is_webtransport || !config.webtransport.enabled || request.uri().path() != prefix {
        return Err(StatusCode::NOT_FOUND);
    }
    if node.shutdown.is_cancelled() || node.admit_connection().is_err() {
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    // An Origin header that is not text is refused, not taken for an absent one.
    let allowed = match request.headers().get(http::header::ORIGIN) {
        None => true,
        Some(origin) => {
            origin.to_str().is_ok_and(|o| origin_allowed(Some(o), &config.client.allowed_origins))
        }
    };
    if !allowed {
        tracing::info!("WebTransport origin rejected");
        return Err(StatusCode::FORBIDDEN);
    }
    let query = request.uri().query().unwrap_or("");
    let protobuf = query.split('&').any(|pair| pair == "cf_protocol=protobuf");
    Ok(if protobuf { ProtocolType::Protobuf } else { ProtocolType::Json })
}

async fn serve_session(session: Session3, quic: quinn::Connection, node: Arc<Node>, protocol: ProtocolType) {
    let session_id = session.session_id();
    let opened = tokio::select! {
        _ = node.shutdown.cancelled() => None,
        opened = tokio::time::timeout(STREAM_TIMEOUT, session.accept_bi()) => match opened {
            Ok(Ok(Some(AcceptedBi::BidiStream(id, stream)))) if id == session_id => Some(stream),
            _ => None,
        },
    };
    let Some(stream) = opened else {
        quic.close(H3_NO_ERROR.into(), b"no stream opened");
        return;
    };
    let (send, recv) = stream.split();
    let info = TransportInfo::new("webtransport", protocol, Direction::Bidirectional);
    // Centrifugo has no write timeout of its own for WebTransport; the WebSocket one applies.
    let write_timeout = node.config.websocket.write_timeout.0;
    let limit = node.config.webtransport.message_size_limit;
    let (client_session, handle) = Session::new(node, info);
    let framing = Framing::stream(protocol);
    let outgoing = Outgoing::new(handle.clone(), protocol, Shape::Replies);
    let writer = tokio::spawn(write_stream(outgoing, send, framing, write_timeout));
    // The protocol has one stream per session: a further stream (or request) is a protocol
    // error, ending the session with 3501 (h3 also keeps state for every stream it accepts, so
    // tolerating them would let a client grow it). The end of the connection ends the session.
    // The session itself must outlive the grace period below: dropping it closes the QUIC
    // connection at once.
    let session = Arc::new(session);
    let watcher = session.clone();
    let connection = quic.clone();
    let ended = async move {
        tokio::select! {
            accepted = watcher.accept_bi() => match accepted {
                Ok(Some(_)) => Inbound::Malformed,
                _ => Inbound::Closed,
            },
            _ = connection.closed() => Inbound::Closed,
        }
    };
    let frames = stream::select(inbound_frames(recv, protocol, limit), stream::once(ended));
    let disconnect = client_session.run(Box::pin(frames)).await;
    tracing::debug!(client = %handle.client, %disconnect, "WebTransport session ended");
    let _ = writer.await;
    if disconnect.code != Disconnect::connection_closed().code {
        // Let the push reach the client and the client close first, as a WebSocket close
        // handshake would.
        let _ = tokio::time::timeout(CLOSE_GRACE, quic.closed()).await;
    }
    quic.close(H3_NO_ERROR.into(), disconnect.reason.as_bytes());
    drop(session);
}

/// The session's input: command frames cut from the stream, then one terminal event.
fn inbound_frames<R>(recv: R, protocol: ProtocolType, limit: usize) -> impl Stream<Item = Inbound>
where
    R: AsyncRead + Unpin,
{
    let state = (recv, Deframer::new(protocol, limit), vec![0u8; READ_CHUNK]);
    stream::unfold(Some(state), |state| async move {
        let (mut recv, mut deframer, mut chunk) = state?;
        loop {
            match deframer.next_frame() {
                Ok(Some(frame)) => return Some((Inbound::Frame(frame), Some((recv, deframer, chunk)))),
                Ok(None) => {}
                // Both are the client's fault and would recur after a reconnect: 3501.
                Err(DeframeError::TooBig | DeframeError::Malformed) => {
                    return Some((Inbound::Malformed, None));
                }
            }
            match recv.read(&mut chunk).await {
                Ok(0) | Err(_) => return Some((Inbound::Closed, None)),
                Ok(read) => deframer.push(&chunk[..read]),
            }
        }
    })
}

/// Writes outbound batches to the stream, then finishes it.
async fn write_stream<W>(mut outgoing: Outgoing, mut send: W, framing: Framing, write_timeout: Duration)
where
    W: AsyncWrite + Unpin,
{
    while let Some(batch) = outgoing.next_batch().await {
        let chunk = framing.encode(&batch);
        if !matches!(tokio::time::timeout(write_timeout, send.write_all(&chunk)).await, Ok(Ok(()))) {
            outgoing.handle().disconnect(Disconnect::write_error());
            return;
        }
    }
    let _ = tokio::time::timeout(write_timeout, send.shutdown()).await;
}
