//! `uni_websocket`: server-to-client JSON pushes over a WebSocket. The connect request comes
//! from the `cf_connect` query parameter or, without it, from the first text message;
//! everything the client sends after that is read (to notice the close) and ignored. Pushes go
//! out one text frame each, or `\n`-joined per batch with `join_push_messages`; pings are
//! native WebSocket pings.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use super::http_entry::{ResponseBody, query_param};
use super::outgoing::{Outgoing, Shape};
use super::websocket::{
    Deflate, InflatingRead, NativePing, PingAction, check_upgrade, read_limit, reader_config,
    switching_protocols,
};
use crate::config::UniWebSocket;
use crate::errors::Disconnect;
use crate::node::Node;
use crate::protocol::framing::Framing;
use crate::protocol::{ProtocolType, deflate};
use crate::proxy::{HeaderSource, capture_headers};
use crate::session::{Direction, Inbound, Session, TransportInfo};

/// Answers a `uni_websocket` upgrade and spawns the connection.
pub fn upgrade(request: Request<Incoming>, node: Arc<Node>) -> Response<ResponseBody> {
    let (mut request, key) = match check_upgrade(request, &node) {
        Ok(admitted) => admitted,
        Err(response) => return *response,
    };
    let connect = query_param(&request, "cf_connect");
    let headers = capture_headers(node.proxies.forwarded_names(), request.headers());
    let deflate = Deflate::negotiate(&request, node.config.uni_websocket.compression());
    let on_upgrade = hyper::upgrade::on(&mut request);
    let tasks = node.tasks.clone();
    tasks.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => serve(TokioIo::new(upgraded), node, connect, headers, deflate).await,
            Err(error) => tracing::debug!(%error, "WebSocket upgrade failed"),
        }
    });
    switching_protocols(&key, None, deflate.is_some())
}

async fn serve<S>(
    io: S,
    node: Arc<Node>,
    connect: Option<String>,
    headers: Vec<(String, String)>,
    deflate: Option<Deflate>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let section = node.config.uni_websocket.clone();
    let limit = section.message_size_limit;
    let config = reader_config(read_limit(limit, deflate.as_ref()), section.read_buffer_size);
    let io = InflatingRead::new(io, limit, deflate.as_ref());
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    let (sink, stream) = ws.split();
    let info = TransportInfo::new("uni_websocket", ProtocolType::Json, Direction::Unidirectional)
        .with_headers(headers, HeaderSource::Http);
    let pongs = Arc::new(AtomicBool::new(true));
    let ping = NativePing::new(&node, pongs.clone());
    let (metrics, closes) = (node.metrics.clone(), !section.disable_closing_handshake);
    let (session, handle) = Session::new(node, info);
    let mut outgoing = Outgoing::new(handle.clone(), ProtocolType::Json, Shape::Pushes);
    if section.disable_disconnect_push {
        outgoing = outgoing.without_disconnect_message();
    }
    let writer = tokio::spawn(write_pushes(outgoing, sink, section, ping, deflate));
    let connect = connect.map(|json| Inbound::connect_json(json.as_bytes()));
    let disconnect = session.run(Box::pin(inbound(stream, connect, pongs))).await;
    tracing::debug!(client = %handle.client, %disconnect, "uni session ended");
    let _ = writer.await;
    if closes && disconnect.code != Disconnect::connection_closed().code {
        metrics.outgoing_closes.get(&[&disconnect.code.to_string(), "uni_websocket"]).inc();
    }
}

/// The session's input: the connect request (given, or the first text message), then only
/// the end of the connection.
fn inbound<S>(
    mut stream: S,
    connect: Option<Inbound>,
    pongs: Arc<AtomicBool>,
) -> impl futures_util::Stream<Item = Inbound>
where
    S: futures_util::Stream<Item = Result<Message, WsError>> + Unpin,
{
    let mut have_connect = connect.is_some();
    let mut first = connect;
    futures_util::stream::poll_fn(move |cx| {
        if let Some(inbound) = first.take() {
            return Poll::Ready(Some(inbound));
        }
        loop {
            let inbound = match futures_util::ready!(stream.poll_next_unpin(cx)) {
                Some(Ok(Message::Text(text))) if !have_connect => {
                    have_connect = true;
                    Inbound::connect_json(text.as_bytes())
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => Inbound::Closed,
                Some(Ok(Message::Pong(_))) => {
                    pongs.store(true, Ordering::Relaxed);
                    continue;
                }
                Some(Ok(_)) => continue,
            };
            return Poll::Ready(Some(inbound));
        }
    })
}

/// Writes bare pushes, sends native pings, and finally the close frame.
async fn write_pushes<S>(
    mut outgoing: Outgoing,
    mut sink: S,
    section: UniWebSocket,
    mut ping: Option<NativePing>,
    deflate: Option<Deflate>,
) where
    S: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    let write_timeout = section.write_timeout.0;
    loop {
        let batch = match &mut ping {
            None => outgoing.next_batch().await,
            Some(ping) => tokio::select! {
                batch = outgoing.next_batch() => batch,
                action = ping.due() => {
                    match action {
                        PingAction::Send => {
                            let sent = tokio::time::timeout(write_timeout, sink.send(Message::Ping(Bytes::new()))).await;
                            if !matches!(sent, Ok(Ok(()))) {
                                outgoing.handle().disconnect(Disconnect::write_error());
                            }
                        }
                        PingAction::NoPong => outgoing.handle().disconnect(Disconnect::no_pong()),
                        PingAction::Wait => {}
                    }
                    continue;
                }
            },
        };
        let Some(batch) = batch else { break };
        if !send_pushes(&mut outgoing, &mut sink, &section, batch, deflate).await {
            return;
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

/// Sends one batch of pushes as text frames; false when the connection failed.
async fn send_pushes<S>(
    outgoing: &mut Outgoing,
    sink: &mut S,
    section: &UniWebSocket,
    batch: Vec<Bytes>,
    deflate: Option<Deflate>,
) -> bool
where
    S: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    let frames = if section.join_push_messages { vec![Framing::JsonBatch.encode(&batch)] } else { batch };
    for frame in frames {
        let message = match deflate {
            Some(deflate) if frame.len() >= deflate.min_size => compressed_text(&frame, deflate.level),
            _ => match Utf8Bytes::try_from(frame) {
                Ok(text) => Message::Text(text),
                Err(_) => {
                    outgoing.handle().disconnect(Disconnect::inappropriate_protocol());
                    continue;
                }
            },
        };
        let sent = tokio::time::timeout(section.write_timeout.0, sink.send(message)).await;
        if !matches!(sent, Ok(Ok(()))) {
            outgoing.handle().disconnect(Disconnect::write_error());
            return false;
        }
    }
    true
}

/// A text message sent deflated: a raw frame with RSV1 (tungstenite knows no extensions).
fn compressed_text(payload: &[u8], level: i32) -> Message {
    let mut compressed = Vec::new();
    deflate::compress_message(payload, level, &mut compressed);
    let mut frame = Frame::message(compressed, OpCode::Data(Data::Text), true);
    frame.header_mut().rsv1 = true;
    Message::Frame(frame)
}
