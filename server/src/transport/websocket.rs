//! Bidirectional WebSocket at `/connection/websocket`: an adapter between the socket and
//! [`Session`]. tokio-tungstenite parses what the client sends; frames to the client are
//! written here, from the session's outbound queue (by the writer task, or by the hub's flusher
//! through [`DirectWrite`] on plain TCP), so every byte leaves in queue order. The frames
//! themselves come from [`crate::protocol::websocket`].
//!
//! The HTTP upgrade is answered by hyper (so the same listener also serves the API); this module
//! checks the request, picks the protocol (JSON by default; Protobuf when the client asks for
//! the `centrifuge-protobuf` subprotocol — echoed back, or browsers abort — or passes
//! `format=protobuf` / `cf_protocol=protobuf`), then pumps frames. Disconnects are sent as close
//! frames with the code and reason (none for 3000); a message over
//! `websocket.message_size_limit` closes with 1009.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::http_entry::{Answered, Endpoint, Origins, ResponseBody, plain, query_has};
use super::tcp::SharedTcp;
use crate::config::WsCompression;
use crate::errors::Disconnect;
use crate::hub::SessionHandle;
use crate::hub::outbound::{Batch, DirectWrite};
use crate::node::Node;
use crate::protocol::ProtocolType;
use crate::protocol::deflate::{self, Inflater};
use crate::protocol::websocket::{self as frames, MAX_HEADER, PING_FRAME};
use crate::proxy::{HeaderSource, capture_headers};
use crate::session::{Direction, Inbound, Session, TransportInfo};

/// Largest frame the writer assembles from queued messages.
const MAX_WRITE_BATCH: usize = 64 * 1024;
/// A single queued message at least this long is written without copying it into a frame
/// buffer (a map state page, a long history).
const COPY_LIMIT: usize = 16 * 1024;
/// How long to wait for the client's close frame after ours.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// tungstenite's read buffer: its default (128 KiB) would dominate per-connection memory.
pub(super) const READ_BUFFER: usize = 512;
const PROTOBUF_SUBPROTOCOL: &str = "centrifuge-protobuf";
const JSON_SUBPROTOCOL: &str = "centrifuge-json";

/// The upgrade endpoints' shared checks: GET only, no new sessions while shutting down, and
/// an allowed origin (no CORS: browsers do not preflight WebSockets).
const UPGRADE: Endpoint =
    Endpoint { methods: &[Method::GET], origins: Origins::Checked, opens_sessions: true };

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
    let query_protobuf = query_has(request, "format=protobuf") || query_has(request, "cf_protocol=protobuf");
    let protocol = if query_protobuf || subprotocol == Some(PROTOBUF_SUBPROTOCOL) {
        ProtocolType::Protobuf
    } else {
        ProtocolType::Json
    };
    (subprotocol, protocol)
}

/// permessage-deflate on a connection that negotiated it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Deflate {
    /// Compression level, as Centrifugo's (1 fastest … 9 best; -1 default, -2 Huffman only).
    pub level: i32,
    /// Payloads shorter than this go uncompressed.
    pub min_size: usize,
    /// Bytes of a received message once inflated.
    pub inflated_limit: usize,
}

impl Deflate {
    /// The settings for `request` when the section enables compression and the client offers
    /// it. A `decompressed_message_size_limit` of 0 means ten times `message_size_limit`, as
    /// Centrifugo's.
    pub(super) fn negotiate(request: &Request<Incoming>, settings: WsCompression) -> Option<Self> {
        let offers = request.headers().get_all(header::SEC_WEBSOCKET_EXTENSIONS);
        if !settings.enabled || !deflate::negotiate(offers.iter().filter_map(|value| value.to_str().ok())) {
            return None;
        }
        let level = match settings.level {
            -1 => 6,
            -2 => 1, // Huffman-only has no equal here: the fastest level is the closest.
            level => level,
        };
        let inflated_limit = match settings.decompressed_message_size_limit {
            0 => settings.message_size_limit.saturating_mul(10),
            limit => limit,
        };
        Some(Self { level, min_size: settings.min_size, inflated_limit })
    }
}

/// Checks an upgrade request: the method, the WebSocket handshake headers, then the
/// endpoint's shared checks (shutdown, origin). `Ok` is the admitted request and its
/// `Sec-WebSocket-Key`.
pub(super) fn check_upgrade(
    request: Request<Incoming>,
    node: &Node,
) -> Result<(Request<Incoming>, HeaderValue), Answered> {
    if request.method() != Method::GET {
        return Err(Box::new(plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")));
    }
    if !header_has_token(&request, header::CONNECTION, "upgrade")
        || !header_has_token(&request, header::UPGRADE, "websocket")
    {
        return Err(Box::new(plain(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade")));
    }
    if request.headers().get(header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
        return Err(Box::new(plain(StatusCode::BAD_REQUEST, "unsupported WebSocket version")));
    }
    let Some(key) = request.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return Err(Box::new(plain(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key")));
    };
    if !is_websocket_key(key.as_bytes()) {
        return Err(Box::new(plain(StatusCode::BAD_REQUEST, "invalid Sec-WebSocket-Key")));
    }
    let request = UPGRADE.admit(request, node)?.request;
    Ok((request, key))
}

/// RFC 6455 §4.1: the key is a base64-encoded 16-byte nonce.
fn is_websocket_key(key: &[u8]) -> bool {
    use base64::Engine as _;
    key.len() == 24
        && base64::engine::general_purpose::STANDARD.decode(key).is_ok_and(|nonce| nonce.len() == 16)
}

/// The 101 answer to an accepted upgrade.
pub(super) fn switching_protocols(
    key: &HeaderValue,
    subprotocol: Option<&'static str>,
    deflate: bool,
) -> Response<ResponseBody> {
    let mut response = Response::new(Full::new(Bytes::new()).boxed_unsync());
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
    if deflate {
        headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, HeaderValue::from_static(deflate::RESPONSE));
    }
    response
}

/// tungstenite's settings for a server reading client frames of at most `limit` bytes into a
/// buffer of `read_buffer_size` (0: [`READ_BUFFER`]); it never writes data frames here. (A
/// write buffer size has nothing to set: frames are assembled per write and not kept.)
pub(super) fn reader_config(limit: usize, read_buffer_size: usize) -> WebSocketConfig {
    let read_buffer = if read_buffer_size == 0 { READ_BUFFER } else { read_buffer_size };
    WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit))
        .read_buffer_size(read_buffer)
        .write_buffer_size(0)
}

/// Answers a WebSocket upgrade request and spawns the connection.
pub fn upgrade(request: Request<Incoming>, node: Arc<Node>) -> Response<ResponseBody> {
    let (mut request, key) = match check_upgrade(request, &node) {
        Ok(admitted) => admitted,
        Err(response) => return *response,
    };
    let (subprotocol, protocol) = negotiate(&request);
    let deflate = Deflate::negotiate(&request, node.config.websocket.compression());
    // For tools like wscat: native WebSocket pings instead of protocol-level ones.
    let native_ping = query_has(&request, "cf_ws_frame_ping_pong=true");
    let options = Options { protocol, native_ping, deflate };
    let headers = capture_headers(node.proxies.forwarded_names(), request.headers());
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
            Some(socket) => serve(upgraded, FrameOut::Tcp(socket), node, options, headers).await,
            // TLS: the stream cannot be shared, so it is split.
            None => {
                let (read, write) = tokio::io::split(upgraded);
                serve(read, FrameOut::Split(write), node, options, headers).await
            }
        }
    });
    switching_protocols(&key, subprotocol, deflate.is_some())
}

/// What the upgrade request settled for the connection.
#[derive(Debug, Clone, Copy)]
struct Options {
    protocol: ProtocolType,
    /// Native WebSocket pings instead of the protocol's.
    native_ping: bool,
    deflate: Option<Deflate>,
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

    async fn write_parts(&mut self, head: &[u8], body: &[u8]) -> std::io::Result<()> {
        match self {
            FrameOut::Tcp(socket) => super::tcp::write_all_parts(socket.stream(), head, body).await,
            FrameOut::Split(write) => {
                write.write_all(head).await?;
                write.write_all(body).await?;
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

    /// One data frame of a single large message: header and shared bytes written as they
    /// are, not copied into one buffer first.
    async fn write_frame_within(&mut self, protocol: ProtocolType, message: &[u8], limit: Duration) -> bool {
        let mut head = [0u8; MAX_HEADER];
        let head_len = frames::data_header(&mut head, protocol, message.len());
        let mut write = std::pin::pin!(self.write_parts(&head[..head_len], message));
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
    read: InflatingRead<R>,
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

/// A connection's byte stream as tungstenite reads it: with permessage-deflate, through an
/// [`Inflater`]; writes (for the unidirectional WebSocket, which lets tungstenite write) pass
/// straight through.
pub(super) struct InflatingRead<S> {
    inner: S,
    inflate: Option<Inflating>,
}

/// A connection's inflater and the plain frames it produced that tungstenite has yet to read.
struct Inflating {
    inflater: Inflater,
    ready: Vec<u8>,
    taken: usize,
}

/// Bytes read from the socket per step when inflating.
const INFLATE_READ_CHUNK: usize = 4096;

impl<S> InflatingRead<S> {
    /// `wire_limit` bounds a message as sent (compressed or not), `deflate` the inflated one.
    pub(super) fn new(inner: S, wire_limit: usize, deflate: Option<&Deflate>) -> Self {
        let inflate = deflate.map(|deflate| Inflating {
            inflater: Inflater::new(wire_limit, deflate.inflated_limit),
            ready: Vec::new(),
            taken: 0,
        });
        Self { inner, inflate }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for InflatingRead<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let Some(inflating) = this.inflate.as_mut() else {
            return std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        loop {
            let pending = &inflating.ready[inflating.taken..];
            if !pending.is_empty() {
                let take = pending.len().min(buf.remaining());
                buf.put_slice(&pending[..take]);
                inflating.taken += take;
                if inflating.taken == inflating.ready.len() {
                    // Dropped, not cleared: an inflated message's buffer is not kept around.
                    (inflating.ready, inflating.taken) = (Vec::new(), 0);
                }
                return std::task::Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; INFLATE_READ_CHUNK];
            let mut read = tokio::io::ReadBuf::new(&mut chunk);
            std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                return std::task::Poll::Ready(Ok(()));
            }
            inflating.inflater.push(read.filled(), &mut inflating.ready);
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for InflatingRead<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The limit tungstenite gets: it sees inflated messages, while the inflater holds the
/// compressed ones to `wire_limit`.
pub(super) fn read_limit(wire_limit: usize, deflate: Option<&Deflate>) -> usize {
    deflate.map_or(wire_limit, |deflate| deflate.inflated_limit.max(wire_limit))
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

/// Direct writes (see [`crate::hub::outbound`]) for a WebSocket on plain TCP.
struct DirectFrames {
    socket: SharedTcp,
    protocol: ProtocolType,
}

/// What a non-blocking write took: a full socket buffer (or a signal) takes nothing.
fn accepted(result: std::io::Result<usize>) -> std::io::Result<usize> {
    match result {
        Err(error)
            if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted) =>
        {
            Ok(0)
        }
        result => result,
    }
}

impl DirectWrite for DirectFrames {
    fn write_now(&self, messages: &[Bytes]) -> std::io::Result<Bytes> {
        let stream = self.socket.stream();
        if let [message] = messages {
            // The common case: one message, written as header + shared bytes without a copy.
            let mut head = [0u8; MAX_HEADER];
            let head_len = frames::data_header(&mut head, self.protocol, message.len());
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
        frames::encode_data_frame(&mut frame, self.protocol, messages);
        let written = accepted(stream.try_write(&frame))?;
        Ok(Bytes::from(frame).slice(written..))
    }
}

/// Runs one connection; `headers` are those of its upgrade request the proxies forward.
async fn serve<R>(read: R, out: FrameOut, node: Arc<Node>, options: Options, headers: Vec<(String, String)>)
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let Options { protocol, native_ping, deflate } = options;
    let limit = node.config.websocket.message_size_limit;
    let read_buffer_size = node.config.websocket.read_buffer_size;
    let write_timeout = node.config.websocket.write_timeout.0;
    let mut info = TransportInfo::new("websocket", protocol, Direction::Bidirectional)
        .with_headers(headers, HeaderSource::Http);
    if native_ping {
        info = info.with_native_ping();
    }
    let pongs = Arc::new(AtomicBool::new(true));
    let native_ping = if native_ping { NativePing::new(&node, pongs.clone()) } else { None };
    let metrics = node.metrics.clone();
    let (session, handle) = Session::new(node, info);
    let direct_socket = match &out {
        FrameOut::Tcp(socket) => Some(socket.clone()),
        FrameOut::Split(_) => None,
    };
    // Compressed frames are assembled by the writer task, not written directly.
    if let (Some(socket), None) = (&direct_socket, deflate) {
        handle.outbound.set_direct(Box::new(DirectFrames { socket: socket.clone(), protocol }));
    }
    let read = ReadSide { read: InflatingRead::new(read, limit, deflate.as_ref()), handle: handle.clone() };
    let config = reader_config(read_limit(limit, deflate.as_ref()), read_buffer_size);
    let mut stream = WebSocketStream::from_raw_socket(read, Role::Server, Some(config)).await;
    let writer = tokio::spawn(write_loop(handle.clone(), out, protocol, write_timeout, native_ping, deflate));
    let disconnect = session.run(Box::pin(inbound(&mut stream, handle.clone(), pongs))).await;
    tracing::debug!(client = %handle.client, %disconnect, "session ended");
    let _ = writer.await;
    if disconnect.code != Disconnect::connection_closed().code {
        metrics.outgoing_closes.get(&[&disconnect.code.to_string(), "websocket"]).inc();
        // Give the client a moment to answer our close frame before the socket drops.
        let _ = tokio::time::timeout(CLOSE_GRACE, async { while stream.next().await.is_some() {} }).await;
    }
    // The direct writer keeps a handle to the socket for as long as the session handle lives
    // (the hub, API calls and flushers may hold it a little longer): end the connection now.
    if let Some(socket) = direct_socket {
        let _ = socket2::SockRef::from(socket.stream()).shutdown(std::net::Shutdown::Both);
    }
}

/// The client's messages as the session's input.
fn inbound<S>(
    stream: S,
    handle: Arc<SessionHandle>,
    pongs: Arc<AtomicBool>,
) -> impl futures_util::Stream<Item = Inbound>
where
    S: futures_util::Stream<Item = Result<Message, WsError>>,
{
    stream.filter_map(move |message| {
        // The answer to a client's close: tungstenite would send its own on a next read, which
        // never comes once the session ends, so echo the code here (ahead of the session's end).
        if let Ok(Message::Close(frame)) = &message {
            let code = frame.as_ref().map(|frame| u16::from(frame.code));
            handle.outbound.enqueue_raw(frames::close_answer(code));
        }
        let inbound = match message {
            Ok(Message::Text(text)) => Some(Inbound::Frame(Bytes::from(text))),
            Ok(Message::Binary(data)) => Some(Inbound::Frame(data)),
            Ok(Message::Pong(_)) => {
                pongs.store(true, Ordering::Relaxed);
                None
            }
            Ok(Message::Ping(_) | Message::Frame(_)) => None,
            Ok(Message::Close(_)) => Some(Inbound::Closed),
            Err(WsError::Capacity(_)) => Some(Inbound::TooBig),
            // Say why before closing (RFC 6455 §7.4.1): a malformed frame is 1002, text that is
            // not UTF-8 is 1007.
            Err(WsError::Protocol(_)) => {
                handle.outbound.enqueue_raw(frames::close_answer(Some(1002)));
                Some(Inbound::Closed)
            }
            Err(WsError::Utf8(_)) => {
                handle.outbound.enqueue_raw(frames::close_answer(Some(1007)));
                Some(Inbound::Closed)
            }
            Err(_) => Some(Inbound::Closed),
        };
        std::future::ready(inbound)
    })
}

/// Native WebSocket pings (`cf_ws_frame_ping_pong=true` here, always on `uni_websocket`): one
/// every `client.ping_interval`; a pong must come back within `client.pong_timeout` (3012).
pub(super) struct NativePing {
    ticks: tokio::time::Interval,
    pong_timeout: Duration,
    /// Set by the reader on every pong.
    answered: Arc<AtomicBool>,
    deadline: Option<tokio::time::Instant>,
}

/// What the writer does when [`NativePing::due`] fires.
pub(super) enum PingAction {
    Send,
    Wait,
    NoPong,
}

impl NativePing {
    /// `None` when pings are off (`ping_interval` 0). The reader sets `answered` on pongs.
    pub(super) fn new(node: &Node, answered: Arc<AtomicBool>) -> Option<Self> {
        let client = &node.config.client;
        let every = client.ping_interval.0;
        let ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        (!every.is_zero()).then_some(Self {
            ticks,
            pong_timeout: client.pong_timeout.0,
            answered,
            deadline: None,
        })
    }

    /// The next ping to send, or the pong deadline.
    pub(super) async fn due(&mut self) -> PingAction {
        let deadline_passed = match self.deadline {
            Some(deadline) => tokio::select! {
                _ = tokio::time::sleep_until(deadline) => true,
                _ = self.ticks.tick() => false,
            },
            None => {
                self.ticks.tick().await;
                false
            }
        };
        let unanswered = self.deadline.is_some() && !self.answered.load(Ordering::Relaxed);
        if unanswered {
            return PingAction::NoPong;
        }
        if deadline_passed {
            self.deadline = None;
            return PingAction::Wait;
        }
        self.answered.store(false, Ordering::Relaxed);
        self.deadline =
            (!self.pong_timeout.is_zero()).then(|| tokio::time::Instant::now() + self.pong_timeout);
        PingAction::Send
    }
}

async fn write_loop(
    handle: Arc<SessionHandle>,
    mut out: FrameOut,
    protocol: ProtocolType,
    write_timeout: Duration,
    native_ping: Option<NativePing>,
    deflate: Option<Deflate>,
) {
    let mut ping = native_ping;
    loop {
        let batch = match &mut ping {
            None => handle.outbound.next_batch(MAX_WRITE_BATCH).await,
            Some(ping) => tokio::select! {
                batch = handle.outbound.next_batch(MAX_WRITE_BATCH) => batch,
                action = ping.due() => {
                    match action {
                        // Through the queue, like every other write, so it cannot cut into one.
                        PingAction::Send => {
                            handle.outbound.enqueue_raw(Bytes::from_static(PING_FRAME));
                        }
                        PingAction::NoPong => handle.disconnect(Disconnect::no_pong()),
                        PingAction::Wait => {}
                    }
                    continue;
                }
            },
        };
        let written = match batch {
            Batch::Messages(messages)
                if deflate.is_none() && messages.len() == 1 && messages[0].len() >= COPY_LIMIT =>
            {
                out.write_frame_within(protocol, &messages[0], write_timeout).await
            }
            Batch::Messages(messages) => {
                // A fresh buffer per frame: one kept between writes would stay allocated on
                // every idle connection.
                let mut frame = Vec::new();
                match deflate {
                    Some(Deflate { level, min_size, .. }) => {
                        frames::encode_deflated_data_frame(&mut frame, protocol, &messages, level, min_size)
                    }
                    None => frames::encode_data_frame(&mut frame, protocol, &messages),
                }
                out.write_within(&frame, write_timeout).await
            }
            Batch::Raw(bytes) => out.write_within(&bytes, write_timeout).await,
            Batch::Close(disconnect) => {
                if disconnect.code != Disconnect::connection_closed().code {
                    let mut frame = Vec::new();
                    frames::encode_close_frame(&mut frame, disconnect.code as u16, &disconnect.reason);
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
