//! Bidirectional WebSocket at `/connection/websocket`: an adapter between the socket and
//! [`Session`]. tokio-tungstenite parses what the client sends; frames to the client are
//! written here, from the session's outbound queue (by the writer task, or by the hub's flusher
//! through [`DirectWrite`] on plain TCP), so every byte leaves in queue order.
//!
//! The HTTP upgrade is answered by hyper (so the same listener also serves the API); this module
//! checks the request, picks the protocol (JSON by default; Protobuf when the client asks for
//! the `centrifuge-protobuf` subprotocol — echoed back, or browsers abort — or passes
//! `format=protobuf` / `cf_protocol=protobuf`), then pumps frames. Disconnects are sent as close
//! frames with the code and reason (none for 3000); a message over
//! `websocket.message_size_limit` closes with 1009.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use super::origin_allowed;
use super::outgoing::{Outgoing, Shape};
use super::tcp::SharedTcp;
use crate::errors::Disconnect;
use crate::node::Node;
use crate::proto::client::Command;
use crate::protocol::ProtocolType;
use crate::session::outbound::{Batch, DirectWrite};
use crate::session::{Inbound, Session, SessionHandle, TransportInfo};

/// Largest frame the writer assembles from queued messages.
const MAX_WRITE_BATCH: usize = 64 * 1024;
/// How long to wait for the client's close frame after ours.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
const PROTOBUF_SUBPROTOCOL: &str = "centrifuge-protobuf";
const JSON_SUBPROTOCOL: &str = "centrifuge-json";

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}

fn header_has_token(request: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    request.headers().get_all(name).iter().any(|value| {
        value
            .to_str()
            .map(|v| v.split(',').any(|part| part.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// Picks the subprotocol to echo (server preference: JSON, then Protobuf) and the protocol type.
fn negotiate(request: &Request<Incoming>) -> (Option<&'static str>, ProtocolType) {
    let requested: Vec<String> = request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_owned()).collect::<Vec<_>>())
        .collect();
    let subprotocol = [JSON_SUBPROTOCOL, PROTOBUF_SUBPROTOCOL]
        .into_iter()
        .find(|known| requested.iter().any(|r| r == known));
    let query = request.uri().query().unwrap_or("");
    let query_protobuf =
        query.split('&').any(|pair| pair == "format=protobuf" || pair == "cf_protocol=protobuf");
    let protocol = if query_protobuf || subprotocol == Some(PROTOBUF_SUBPROTOCOL) {
        ProtocolType::Protobuf
    } else {
        ProtocolType::Json
    };
    (subprotocol, protocol)
}

/// Checks an upgrade request; `Err` is the response refusing it.
/// Why an upgrade is refused: the status and text of the answer.
type Refusal = (StatusCode, &'static str);

fn check_upgrade(request: &Request<Incoming>, node: &Node) -> Result<HeaderValue, Refusal> {
    if request.method() != http::Method::GET {
        return Err((StatusCode::METHOD_NOT_ALLOWED, "method not allowed"));
    }
    if !header_has_token(request, header::CONNECTION, "upgrade")
        || !header_has_token(request, header::UPGRADE, "websocket")
    {
        return Err((StatusCode::BAD_REQUEST, "expected a WebSocket upgrade"));
    }
    if request.headers().get(header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
        return Err((StatusCode::BAD_REQUEST, "unsupported WebSocket version"));
    }
    let Some(key) = request.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return Err((StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key"));
    };
    if node.shutdown.is_cancelled() {
        return Err((StatusCode::SERVICE_UNAVAILABLE, "shutting down"));
    }
    let origin = request.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok());
    if !origin_allowed(origin, &node.config.client.allowed_origins) {
        tracing::info!(origin = origin.unwrap_or(""), "WebSocket origin rejected");
        return Err((StatusCode::FORBIDDEN, "origin not allowed"));
    }
    Ok(key)
}

/// The 101 answer to an accepted upgrade.
fn switching_protocols(key: &HeaderValue, subprotocol: Option<&'static str>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&derive_accept_key(key.as_bytes())).expect("base64 is a valid header"),
    );
    if let Some(subprotocol) = subprotocol {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(subprotocol));
    }
    response
}

/// Answers a `uni_websocket` upgrade: JSON pushes only; the connect request comes from the
/// `cf_connect` query parameter or, without it, from the first text message.
pub fn upgrade_unidirectional(mut request: Request<Incoming>, node: Arc<Node>) -> Response<Full<Bytes>> {
    let key = match check_upgrade(&request, &node) {
        Ok(key) => key,
        Err((status, text)) => return plain(status, text),
    };
    let connect = crate::transport::http_stream::query_param(&request, "cf_connect");
    let on_upgrade = hyper::upgrade::on(&mut request);
    let tasks = node.tasks.clone();
    tasks.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => serve_unidirectional(TokioIo::new(upgraded), node, connect).await,
            Err(error) => tracing::debug!(%error, "WebSocket upgrade failed"),
        }
    });
    switching_protocols(&key, None)
}

/// The session's first input for a JSON connect request (3501 when it is not one).
fn connect_command(json: &[u8]) -> Inbound {
    match crate::transport::http_stream::parse_connect_request(json) {
        Some(connect) => {
            Inbound::Command(Box::new(Command { id: 1, connect: Some(connect), ..Default::default() }))
        }
        None => Inbound::Malformed,
    }
}

async fn serve_unidirectional<S>(io: S, node: Arc<Node>, connect: Option<String>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let section = node.config.uni_websocket.clone();
    let config = WebSocketConfig::default()
        .max_message_size(Some(section.message_size_limit))
        .max_frame_size(Some(section.message_size_limit))
        .read_buffer_size(512)
        .write_buffer_size(0);
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    let (sink, mut stream) = ws.split();
    let info = TransportInfo {
        name: "uni_websocket",
        protocol: ProtocolType::Json,
        app_ping: true,
        unidirectional: true,
        emulation_session: None,
    };
    let ping_every =
        (!node.config.client.ping_interval.is_zero()).then_some(node.config.client.ping_interval.0);
    let (session, handle) = Session::new(node, info);
    let mut outgoing = Outgoing::new(handle.clone(), ProtocolType::Json, Shape::Pushes);
    if section.disable_disconnect_push {
        outgoing = outgoing.without_disconnect_message();
    }
    let writer = tokio::spawn(write_pushes(outgoing, sink, section, ping_every));

    // The connect request: from the query, else the first text message; everything the client
    // sends after it is read (to notice the close) and ignored.
    let mut first = connect.as_deref().map(|json| connect_command(json.as_bytes()));
    let mut have_connect = first.is_some();
    let frames = futures_util::stream::poll_fn(move |cx| {
        if let Some(inbound) = first.take() {
            return std::task::Poll::Ready(Some(inbound));
        }
        loop {
            let inbound = match futures_util::ready!(stream.poll_next_unpin(cx)) {
                Some(Ok(Message::Text(text))) if !have_connect => {
                    have_connect = true;
                    connect_command(text.as_bytes())
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => Inbound::Closed,
                Some(Ok(_)) => continue,
            };
            return std::task::Poll::Ready(Some(inbound));
        }
    });
    let disconnect = session.run(Box::pin(frames)).await;
    tracing::debug!(client = %handle.client, %disconnect, "uni session ended");
    let _ = writer.await;
}

/// Answers a WebSocket upgrade request and spawns the connection.
pub fn upgrade(mut request: Request<Incoming>, node: Arc<Node>) -> Response<Full<Bytes>> {
    let key = match check_upgrade(&request, &node) {
        Ok(key) => key,
        Err((status, text)) => return plain(status, text),
    };
    let (subprotocol, protocol) = negotiate(&request);
    // For tools like wscat: native WebSocket pings instead of protocol-level ones.
    let native_ping =
        request.uri().query().unwrap_or("").split('&').any(|p| p == "cf_ws_frame_ping_pong=true");
    let socket = SharedTcp::from_request(&request);
    let on_upgrade = hyper::upgrade::on(&mut request);
    let tasks = node.tasks.clone();
    tasks.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => TokioIo::new(upgraded),
            Err(error) => return tracing::debug!(%error, "WebSocket upgrade failed"),
        };
        match socket {
            // Plain TCP: read through hyper's IO, write through our own handle to the socket.
            Some(socket) => serve(upgraded, FrameOut::Tcp(socket), node, protocol, native_ping).await,
            // TLS: the stream cannot be shared, so it is split.
            None => {
                let (read, write) = tokio::io::split(upgraded);
                serve(read, FrameOut::Split(write), node, protocol, native_ping).await
            }
        }
    });
    switching_protocols(&key, subprotocol)
}

/// Where a connection's writer sends framed bytes.
enum FrameOut {
    Tcp(SharedTcp),
    Split(tokio::io::WriteHalf<TokioIo<hyper::upgrade::Upgraded>>),
}

impl FrameOut {
    async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            FrameOut::Tcp(socket) => super::tcp::write_all(socket.stream(), data).await,
            FrameOut::Split(write) => {
                write.write_all(data).await?;
                write.flush().await
            }
        }
    }

    /// Writes `data`, paying for a timer only when the write has to wait.
    async fn write_within(&mut self, data: &[u8], limit: Duration) -> bool {
        let mut write = std::pin::pin!(self.write_all(data));
        match (&mut write).now_or_never() {
            Some(result) => result.is_ok(),
            None => matches!(tokio::time::timeout(limit, write).await, Ok(Ok(()))),
        }
    }
}

/// The IO tungstenite gets: it reads the client's frames from the connection, and whatever it
/// writes itself (pongs to native pings, the answer to a client's close) joins the session's
/// outbound queue as ready frames, so every write to the socket stays in one ordered stream.
struct ReadSide<R> {
    read: R,
    handle: Arc<SessionHandle>,
}

impl<R: AsyncRead + Unpin> AsyncRead for ReadSide<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl<R: Unpin> AsyncWrite for ReadSide<R> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        // Refused only when the connection is closing (or over its queue bound, which closes
        // it as slow): the bytes are then of no use.
        let _ = self.handle.outbound.enqueue_raw(Bytes::copy_from_slice(data));
        std::task::Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Direct writes (see [`crate::session::outbound`]) for a WebSocket on plain TCP.
struct DirectFrames {
    socket: SharedTcp,
    protocol: ProtocolType,
}

impl DirectWrite for DirectFrames {
    fn write_now(&self, messages: &[Bytes]) -> std::io::Result<Bytes> {
        let stream = self.socket.stream();
        let accepted = |result: std::io::Result<usize>| match result {
            Ok(n) => Ok(n),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                Ok(0)
            }
            Err(error) => Err(error),
        };
        if let [message] = messages {
            // The common case: one message, written as header + shared bytes without a copy.
            let mut head = [0u8; MAX_HEADER];
            let head_len = frame_header(&mut head, data_opcode(self.protocol), message.len());
            let total = head_len + message.len();
            let slices = [std::io::IoSlice::new(&head[..head_len]), std::io::IoSlice::new(message)];
            let written = accepted(stream.try_write_vectored(&slices))?;
            if written == total {
                return Ok(Bytes::new());
            }
            let mut frame = Vec::with_capacity(total);
            frame.extend_from_slice(&head[..head_len]);
            frame.extend_from_slice(message);
            return Ok(Bytes::from(frame).slice(written..));
        }
        let mut frame = Vec::new();
        encode_data_frame(&mut frame, self.protocol, messages);
        let written = accepted(stream.try_write(&frame))?;
        Ok(Bytes::from(frame).slice(written..))
    }
}

const MAX_HEADER: usize = 10;
const OPCODE_TEXT: u8 = 0x1;
const OPCODE_BINARY: u8 = 0x2;
const OPCODE_CLOSE: u8 = 0x8;
const OPCODE_PING: u8 = 0x9;

fn data_opcode(protocol: ProtocolType) -> u8 {
    match protocol {
        ProtocolType::Json => OPCODE_TEXT,
        ProtocolType::Protobuf => OPCODE_BINARY,
    }
}

/// Writes a server frame header (final, unmasked) into `out`; returns its length.
fn frame_header(out: &mut [u8; MAX_HEADER], opcode: u8, len: usize) -> usize {
    out[0] = 0x80 | opcode;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if len <= usize::from(u16::MAX) {
        out[1] = 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// Appends one data frame carrying `messages` in the protocol's framing (JSON lines, or
/// length-prefixed Protobuf messages, which the queue already holds with their prefix). JSON
/// messages come from our encoder, so the text frame is valid UTF-8.
fn encode_data_frame(out: &mut Vec<u8>, protocol: ProtocolType, messages: &[Bytes]) {
    let separators = if protocol == ProtocolType::Json { messages.len().saturating_sub(1) } else { 0 };
    let len = messages.iter().map(Bytes::len).sum::<usize>() + separators;
    let mut head = [0u8; MAX_HEADER];
    let head_len = frame_header(&mut head, data_opcode(protocol), len);
    out.reserve(head_len + len);
    out.extend_from_slice(&head[..head_len]);
    for (i, message) in messages.iter().enumerate() {
        if i > 0 && protocol == ProtocolType::Json {
            out.push(b'\n');
        }
        out.extend_from_slice(message);
    }
}

/// Appends a close frame with `code` and `reason` (cut to the 123 bytes a control frame
/// allows, at a character boundary).
fn encode_close_frame(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut head = [0u8; MAX_HEADER];
    let head_len = frame_header(&mut head, OPCODE_CLOSE, 2 + end);
    out.extend_from_slice(&head[..head_len]);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&reason.as_bytes()[..end]);
}

async fn serve<R>(read: R, out: FrameOut, node: Arc<Node>, protocol: ProtocolType, native_ping: bool)
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let limit = node.config.websocket.message_size_limit;
    let write_timeout = node.config.websocket.write_timeout.0;
    let info = TransportInfo {
        name: "websocket",
        protocol,
        app_ping: !native_ping,
        unidirectional: false,
        emulation_session: None,
    };
    let ping_every = (native_ping && !node.config.client.ping_interval.is_zero())
        .then_some(node.config.client.ping_interval.0);
    let (session, handle) = Session::new(node, info);
    let direct_socket = match &out {
        FrameOut::Tcp(socket) => Some(socket.clone()),
        FrameOut::Split(_) => None,
    };
    if let Some(socket) = &direct_socket {
        handle.outbound.set_direct(Box::new(DirectFrames { socket: socket.clone(), protocol }));
    }
    // A small read buffer: tungstenite's default (128 KiB) would dominate per-connection memory.
    // tungstenite never writes data frames here (see `ReadSide`).
    let config = WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit))
        .read_buffer_size(512)
        .write_buffer_size(0);
    let read = ReadSide { read, handle: handle.clone() };
    let mut stream = WebSocketStream::from_raw_socket(read, Role::Server, Some(config)).await;
    let writer = tokio::spawn(write_loop(handle.clone(), out, protocol, write_timeout, ping_every));

    let closing = handle.clone();
    let frames = (&mut stream).filter_map(move |message| {
        // The answer to a client's close: tungstenite would send its own on a next read, which
        // never comes once the session ends, so echo the code here (ahead of the session's end).
        if let Ok(Message::Close(frame)) = &message {
            let mut answer = Vec::new();
            match frame {
                Some(frame) => encode_close_frame(&mut answer, u16::from(frame.code), ""),
                None => answer.extend_from_slice(&[0x80 | OPCODE_CLOSE, 0]),
            }
            closing.outbound.enqueue_raw(Bytes::from(answer));
        }
        let inbound = match message {
            Ok(Message::Text(text)) => Some(Inbound::Frame(Bytes::from(text))),
            Ok(Message::Binary(data)) => Some(Inbound::Frame(data)),
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => None,
            Ok(Message::Close(_)) => Some(Inbound::Closed),
            Err(WsError::Capacity(_)) => Some(Inbound::TooBig),
            Err(_) => Some(Inbound::Closed),
        };
        std::future::ready(inbound)
    });
    let disconnect = session.run(Box::pin(frames)).await;
    tracing::debug!(client = %handle.client, %disconnect, "session ended");
    let _ = writer.await;
    if disconnect.code != Disconnect::connection_closed().code {
        // Give the client a moment to answer our close frame before the socket drops.
        let _ = tokio::time::timeout(CLOSE_GRACE, async { while stream.next().await.is_some() {} }).await;
    }
    // The direct writer keeps a handle to the socket for as long as the session handle lives
    // (the hub, API calls and flushers may hold it a little longer): end the connection now.
    if let Some(socket) = direct_socket {
        let _ = socket2::SockRef::from(socket.stream()).shutdown(std::net::Shutdown::Both);
    }
}

async fn write_loop(
    handle: Arc<SessionHandle>,
    mut out: FrameOut,
    protocol: ProtocolType,
    write_timeout: Duration,
    ping_every: Option<Duration>,
) {
    let mut ping =
        ping_every.map(|every| tokio::time::interval_at(tokio::time::Instant::now() + every, every));
    loop {
        let batch = match &mut ping {
            None => handle.outbound.next_batch(MAX_WRITE_BATCH).await,
            Some(ping) => tokio::select! {
                batch = handle.outbound.next_batch(MAX_WRITE_BATCH) => batch,
                _ = ping.tick() => {
                    // Through the queue, like every other write, so it cannot cut into one.
                    handle.outbound.enqueue_raw(Bytes::from_static(&[0x80 | OPCODE_PING, 0]));
                    continue;
                }
            },
        };
        let written = match batch {
            Batch::Messages(messages) => {
                // A fresh buffer per frame: one kept between writes would stay allocated on
                // every idle connection.
                let mut frame = Vec::new();
                encode_data_frame(&mut frame, protocol, &messages);
                out.write_within(&frame, write_timeout).await
            }
            Batch::Raw(bytes) => out.write_within(&bytes, write_timeout).await,
            Batch::Close(disconnect) => {
                if disconnect.code != Disconnect::connection_closed().code {
                    let mut frame = Vec::new();
                    encode_close_frame(&mut frame, disconnect.code as u16, &disconnect.reason);
                    let _ = out.write_within(&frame, write_timeout).await;
                }
                return;
            }
        };
        if !written {
            handle.disconnect(Disconnect::write_error());
            return;
        }
    }
}

/// Writes bare pushes, one text frame each (or `\n`-joined per batch with
/// `join_push_messages`), sends native pings, and finally the close frame.
async fn write_pushes<S>(
    mut outgoing: Outgoing,
    mut sink: S,
    section: crate::config::UniWebSocket,
    ping_every: Option<Duration>,
) where
    S: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    let write_timeout = section.write_timeout.0;
    let mut ping =
        ping_every.map(|every| tokio::time::interval_at(tokio::time::Instant::now() + every, every));
    loop {
        let batch = match &mut ping {
            None => outgoing.next_batch().await,
            Some(ping) => tokio::select! {
                batch = outgoing.next_batch() => batch,
                _ = ping.tick() => {
                    let sent = tokio::time::timeout(write_timeout, sink.send(Message::Ping(Bytes::new()))).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        outgoing.handle().disconnect(Disconnect::write_error());
                    }
                    continue;
                }
            },
        };
        let Some(batch) = batch else { break };
        let frames: Vec<Bytes> =
            if section.join_push_messages { vec![Bytes::from(batch.join(&b'\n'))] } else { batch };
        for frame in frames {
            let Ok(text) = Utf8Bytes::try_from(frame) else {
                outgoing.handle().disconnect(Disconnect::inappropriate_protocol());
                continue;
            };
            let sent = tokio::time::timeout(write_timeout, sink.send(Message::Text(text))).await;
            if !matches!(sent, Ok(Ok(()))) {
                outgoing.handle().disconnect(Disconnect::write_error());
                return;
            }
        }
    }
    let disconnect = outgoing.closed_with().unwrap_or_else(Disconnect::connection_closed);
    if !section.disable_closing_handshake && disconnect.code != Disconnect::connection_closed().code {
        let close = CloseFrame {
            code: CloseCode::from(disconnect.code as u16),
            reason: Utf8Bytes::from(disconnect.reason),
        };
        let _ = tokio::time::timeout(write_timeout, sink.send(Message::Close(Some(close)))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_headers_use_the_shortest_length_form() {
        let mut head = [0u8; MAX_HEADER];
        assert_eq!(frame_header(&mut head, OPCODE_TEXT, 125), 2);
        assert_eq!(&head[..2], &[0x81, 125]);
        assert_eq!(frame_header(&mut head, OPCODE_BINARY, 126), 4);
        assert_eq!(&head[..4], &[0x82, 126, 0, 126]);
        assert_eq!(frame_header(&mut head, OPCODE_BINARY, 65535), 4);
        assert_eq!(&head[..4], &[0x82, 126, 0xff, 0xff]);
        assert_eq!(frame_header(&mut head, OPCODE_TEXT, 65536), 10);
        assert_eq!(&head[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }

    #[test]
    fn data_frames_join_json_lines_and_concatenate_protobuf() {
        let messages = [Bytes::from_static(b"{\"a\":1}"), Bytes::from_static(b"{}")];
        let mut frame = Vec::new();
        encode_data_frame(&mut frame, ProtocolType::Json, &messages);
        assert_eq!(frame, b"\x81\x0a{\"a\":1}\n{}");
        frame.clear();
        encode_data_frame(
            &mut frame,
            ProtocolType::Protobuf,
            &[Bytes::from_static(&[1, 7]), Bytes::from_static(&[0])],
        );
        assert_eq!(frame, [0x82, 3, 1, 7, 0]);
    }

    #[test]
    fn close_reasons_are_cut_to_123_bytes_on_a_character_boundary() {
        let mut frame = Vec::new();
        encode_close_frame(&mut frame, 3008, &"é".repeat(100));
        // 2 + 122 bytes: 61 two-byte characters, the 62nd would pass 123.
        assert_eq!(frame[1] as usize, 2 + 122);
        assert_eq!(&frame[2..4], &3008u16.to_be_bytes());
        assert!(std::str::from_utf8(&frame[4..]).is_ok());
    }
}
