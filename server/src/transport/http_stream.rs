//! HTTP transports whose server-to-client side is one long streaming response: the
//! bidirectional emulations `http_stream` and `sse` (client commands arrive separately, at
//! `/emulation`), and the unidirectional `uni_http_stream` and `uni_sse`.
//!
//! All four are thin adapters: they read the opening request (bounded by the section's
//! `max_request_body_size`, else 413), start a [`Session`], and frame its
//! [`Outgoing`] messages into the response body:
//!
//! | transport | request | response framing |
//! |---|---|---|
//! | `http_stream` | `POST`, body = first command frame (Protobuf if `application/octet-stream`) | JSON lines, or varint-delimited Protobuf |
//! | `sse` | `GET ?cf_connect=<JSON>` or `POST` body (JSON only) | `\r\n`, then `data: <reply>\n\n` |
//! | `uni_http_stream` | `POST`, JSON `ConnectRequest` | JSON push lines |
//! | `uni_sse` | `GET ?cf_connect=<JSON>` (absent = empty request) or `POST` | `\r\n`, then `data: <push>\n\n` |
//!
//! Emulation sessions are registered in [`EmulationSessions`] under the session id announced in
//! their connect result; `/emulation` requests ([`emulation`]) feed commands to them through a
//! bounded queue.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use prost::Message;
use tokio::sync::mpsc;

use super::origin_allowed;
use super::outgoing::{Framing, Outgoing, Shape};
use crate::cluster;
use crate::node::Node;
use crate::proto::client::{Command, ConnectRequest, EmulationRequest};
use crate::proto::cluster::EmulationFrame;
use crate::proto::cluster::control_message::Command as ControlCommand;
use crate::protocol::ProtocolType;
use crate::session::{Inbound, Session, TransportInfo};

/// Response bodies of the HTTP listener (whole or streamed).
pub type ResponseBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

/// Command frames waiting for one emulation session; a client that outruns its session gets
/// 503 from `/emulation` rather than an unbounded queue.
const EMULATION_QUEUE: usize = 32;

/// Live emulation sessions of this node, by session id.
#[derive(Debug, Default)]
pub struct EmulationSessions {
    sessions: Mutex<HashMap<String, mpsc::Sender<Inbound>>>,
}

impl EmulationSessions {
    fn insert(&self, id: String, sender: mpsc::Sender<Inbound>) {
        self.sessions.lock().expect("emulation registry poisoned").insert(id, sender);
    }

    fn remove(&self, id: &str) {
        self.sessions.lock().expect("emulation registry poisoned").remove(id);
    }

    fn get(&self, id: &str) -> Option<mpsc::Sender<Inbound>> {
        self.sessions.lock().expect("emulation registry poisoned").get(id).cloned()
    }
}

/// Removes a session from the registry when its response stream ends or is dropped.
struct Registration {
    node: Arc<Node>,
    id: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.node.emulation.remove(&self.id);
    }
}

pub fn plain(status: StatusCode, text: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())).boxed_unsync());
    *response.status_mut() = status;
    response
}

/// The streaming 200 response: no-cache headers, then one chunk per outbound batch. `guard`
/// lives as long as the body (registry clean-up).
fn stream_response(
    outgoing: Outgoing,
    framing: Framing,
    cors: Option<HeaderValue>,
    guard: Option<Registration>,
) -> Response<ResponseBody> {
    let preamble = (framing == Framing::EventStream).then(|| Bytes::from_static(b"\r\n"));
    let first = stream::iter(preamble.map(|p| Ok::<_, Infallible>(Frame::data(p))));
    let batches = stream::unfold((outgoing, guard), move |(mut outgoing, guard)| async move {
        let batch = outgoing.next_batch().await?;
        Some((Ok(Frame::data(framing.chunk(&batch))), (outgoing, guard)))
    });
    let mut response = Response::new(StreamBody::new(first.chain(batches)).boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(framing.content_type()));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache, no-store, must-revalidate, max-age=0"),
    );
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers.insert("expire", HeaderValue::from_static("0"));
    // Proxies such as nginx must not buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Some(origin) = cors {
        allow_origin(headers, origin);
    }
    response
}

/// CORS answer for an allowed origin: echoed, with credentials allowed (as Centrifugo does).
fn allow_origin(headers: &mut HeaderMap, origin: HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
}

/// Why a request is refused: the status and text of the answer.
type Refusal = (StatusCode, &'static str);

/// The `Origin` to echo in CORS headers, or a 403 refusal when the origin is not allowed.
fn check_origin(headers: &HeaderMap, node: &Node) -> Result<Option<HeaderValue>, Refusal> {
    let Some(origin) = headers.get(header::ORIGIN) else { return Ok(None) };
    let allowed =
        origin.to_str().is_ok_and(|origin| origin_allowed(Some(origin), &node.config.client.allowed_origins));
    if allowed { Ok(Some(origin.clone())) } else { Err((StatusCode::FORBIDDEN, "origin not allowed")) }
}

/// Answers a CORS preflight (204) for an endpoint that takes `methods`.
fn preflight(request: &Request<Incoming>, node: &Node, methods: &'static str) -> Response<ResponseBody> {
    let origin = match check_origin(request.headers(), node) {
        Ok(origin) => origin,
        Err((status, text)) => return plain(status, text),
    };
    let mut response = plain(StatusCode::NO_CONTENT, "");
    let headers = response.headers_mut();
    if let Some(origin) = origin {
        allow_origin(headers, origin);
    }
    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(methods));
    let requested = request.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS).cloned();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        requested.unwrap_or_else(|| HeaderValue::from_static("content-type")),
    );
    headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("300"));
    response
}

/// Reads a request body of at most `limit` bytes (413 beyond it, 499-like close when the
/// client goes away, which hyper reports as an error).
async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, Refusal> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            Err((StatusCode::PAYLOAD_TOO_LARGE, "request body too large"))
        }
        Err(_) => Err((StatusCode::BAD_REQUEST, "could not read the request body")),
    }
}

/// A query parameter, percent-decoded (`+` as a space, as forms send it).
pub fn query_param(request: &Request<Incoming>, name: &str) -> Option<String> {
    request.uri().query()?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| {
            let value = value.replace('+', " ");
            percent_encoding::percent_decode_str(&value).decode_utf8_lossy().into_owned()
        })
    })
}

fn is_protobuf(request: &Request<Incoming>) -> bool {
    request.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes() == b"application/octet-stream")
}

/// Starts an emulation session whose first frame is `frame`; returns its response.
fn start_emulation(
    node: Arc<Node>,
    name: &'static str,
    protocol: ProtocolType,
    framing: Framing,
    frame: Bytes,
    cors: Option<HeaderValue>,
) -> Response<ResponseBody> {
    let id = uuid::Uuid::new_v4().to_string();
    let info = TransportInfo {
        name,
        protocol,
        app_ping: true,
        unidirectional: false,
        emulation_session: Some(id.clone()),
    };
    let (session, handle) = Session::new(node.clone(), info);
    let (sender, receiver) = mpsc::channel(EMULATION_QUEUE);
    node.emulation.insert(id.clone(), sender);
    let registration = Registration { node: node.clone(), id };
    let commands = stream::unfold(receiver, |mut receiver| async move {
        let inbound = receiver.recv().await?;
        Some((inbound, receiver))
    });
    // The stream never ends on its own: the session ends when the response body is dropped
    // (client gone) or on a disconnect.
    let inbound = stream::once(async move { Inbound::Frame(frame) }).chain(commands).chain(stream::pending());
    node.tasks.spawn(session.run(Box::pin(inbound)));
    stream_response(Outgoing::new(handle, protocol, Shape::Replies), framing, cors, Some(registration))
}

/// `POST /connection/http_stream`.
pub async fn http_stream(request: Request<Incoming>, node: Arc<Node>) -> Response<ResponseBody> {
    if request.method() == Method::OPTIONS {
        return preflight(&request, &node, "POST, OPTIONS");
    }
    if request.method() != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    if node.shutdown.is_cancelled() {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    let cors = match check_origin(request.headers(), &node) {
        Ok(cors) => cors,
        Err((status, text)) => return plain(status, text),
    };
    let (protocol, framing) = if is_protobuf(&request) {
        (ProtocolType::Protobuf, Framing::Delimited)
    } else {
        (ProtocolType::Json, Framing::JsonLines)
    };
    let frame = match read_body(request.into_body(), node.config.http_stream.max_request_body_size).await {
        Ok(frame) => frame,
        Err((status, text)) => return plain(status, text),
    };
    start_emulation(node, "http_stream", protocol, framing, frame, cors)
}

/// `GET /connection/sse?cf_connect=…` or `POST /connection/sse`.
pub async fn sse(request: Request<Incoming>, node: Arc<Node>) -> Response<ResponseBody> {
    if request.method() == Method::OPTIONS {
        return preflight(&request, &node, "GET, POST, OPTIONS");
    }
    if node.shutdown.is_cancelled() {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    let cors = match check_origin(request.headers(), &node) {
        Ok(cors) => cors,
        Err((status, text)) => return plain(status, text),
    };
    let frame = match *request.method() {
        Method::GET => match query_param(&request, "cf_connect") {
            Some(connect) if connect.len() <= node.config.sse.max_request_body_size => Bytes::from(connect),
            Some(_) => return plain(StatusCode::PAYLOAD_TOO_LARGE, "cf_connect too large"),
            None => return plain(StatusCode::BAD_REQUEST, "missing cf_connect"),
        },
        Method::POST => match read_body(request.into_body(), node.config.sse.max_request_body_size).await {
            Ok(frame) => frame,
            Err((status, text)) => return plain(status, text),
        },
        _ => return plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    };
    start_emulation(node, "sse", ProtocolType::Json, Framing::EventStream, frame, cors)
}

/// `POST /emulation`: commands for an emulation session, answered 204 once queued.
pub async fn emulation(request: Request<Incoming>, node: Arc<Node>) -> Response<ResponseBody> {
    if request.method() == Method::OPTIONS {
        return preflight(&request, &node, "POST, OPTIONS");
    }
    if request.method() != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    let cors = match check_origin(request.headers(), &node) {
        Ok(cors) => cors,
        Err((status, text)) => return plain(status, text),
    };
    let protobuf = is_protobuf(&request);
    let body = match read_body(request.into_body(), node.config.emulation.max_request_body_size).await {
        Ok(body) => body,
        Err((status, text)) => return plain(status, text),
    };
    let Some((target_node, session, data)) = parse_emulation(&body, protobuf) else {
        return plain(StatusCode::BAD_REQUEST, "malformed emulation request");
    };
    if target_node != node.uid && node.emulation.get(&session).is_none() {
        if !node.cluster.knows(&target_node) {
            return plain(StatusCode::NOT_FOUND, "unknown node");
        }
        // The session lives on another node: hand the frame over through the broker. As in
        // Centrifugo, the answer is 204 once it is sent; the frame is not acknowledged.
        let frame = EmulationFrame { session, data };
        let mut response =
            match cluster::send(&node, ControlCommand::Emulation(frame), Some(&target_node)).await {
                Ok(()) => plain(StatusCode::NO_CONTENT, ""),
                Err(_) => plain(StatusCode::SERVICE_UNAVAILABLE, "cannot reach the session's node"),
            };
        if let Some(origin) = cors {
            allow_origin(response.headers_mut(), origin);
        }
        return response;
    }
    let Some(sender) = node.emulation.get(&session) else {
        return plain(StatusCode::NOT_FOUND, "unknown session");
    };
    let mut response = match sender.try_send(Inbound::Frame(data)) {
        Ok(()) => plain(StatusCode::NO_CONTENT, ""),
        Err(mpsc::error::TrySendError::Full(_)) => plain(StatusCode::SERVICE_UNAVAILABLE, "session is busy"),
        Err(mpsc::error::TrySendError::Closed(_)) => plain(StatusCode::NOT_FOUND, "unknown session"),
    };
    if let Some(origin) = cors {
        allow_origin(response.headers_mut(), origin);
    }
    response
}

/// A command frame for a local emulation session that arrived through another node. Dropped
/// when the session is gone or busy, as a lost HTTP request would be.
pub fn deliver_emulation(node: &Node, session: &str, data: Bytes) {
    if let Some(sender) = node.emulation.get(session)
        && sender.try_send(Inbound::Frame(data)).is_err()
    {
        tracing::debug!(%session, "routed emulation frame dropped: session busy or gone");
    }
}

/// `(node, session, command frame)` of an emulation request. JSON: `data` is a JSON string
/// holding the newline-joined commands; Protobuf: an `EmulationRequest` whose `data` holds
/// varint-delimited commands.
fn parse_emulation(body: &[u8], protobuf: bool) -> Option<(String, String, Bytes)> {
    let request = if protobuf {
        EmulationRequest::decode(body).ok()?
    } else {
        serde_json::from_slice::<EmulationRequest>(body).ok()?
    };
    let data = if protobuf {
        request.data
    } else {
        // The raw-JSON `data` field holds a JSON string literal; its text is the frame.
        Bytes::from(serde_json::from_slice::<String>(&request.data).ok()?)
    };
    (!request.session.is_empty()).then_some((request.node, request.session, data))
}

/// Starts a unidirectional session from a JSON connect request. A body that is not one is
/// refused with 400 before any stream starts, as Centrifugo does.
fn start_uni(
    node: Arc<Node>,
    name: &'static str,
    request: &[u8],
    framing: Framing,
) -> Response<ResponseBody> {
    let Some(connect) = parse_connect_request(request) else {
        return plain(StatusCode::BAD_REQUEST, "malformed connect request");
    };
    let info = TransportInfo {
        name,
        protocol: ProtocolType::Json,
        app_ping: true,
        unidirectional: true,
        emulation_session: None,
    };
    let (session, handle) = Session::new(node.clone(), info);
    let first = Inbound::Command(Box::new(Command { id: 1, connect: Some(connect), ..Default::default() }));
    let inbound = stream::once(async move { first }).chain(stream::pending());
    node.tasks.spawn(session.run(Box::pin(inbound)));
    stream_response(Outgoing::new(handle, ProtocolType::Json, Shape::Pushes), framing, None, None)
}

/// A JSON `ConnectRequest`; an empty body is an empty request.
pub fn parse_connect_request(json: &[u8]) -> Option<ConnectRequest> {
    if json.iter().all(u8::is_ascii_whitespace) {
        return Some(ConnectRequest::default());
    }
    serde_json::from_slice(json).ok()
}

/// `POST /connection/uni_http_stream`.
pub async fn uni_http_stream(request: Request<Incoming>, node: Arc<Node>) -> Response<ResponseBody> {
    if request.method() != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    if node.shutdown.is_cancelled() {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    let body = match read_body(request.into_body(), node.config.uni_http_stream.max_request_body_size).await {
        Ok(body) => body,
        Err((status, text)) => return plain(status, text),
    };
    start_uni(node, "uni_http_stream", &body, Framing::JsonLines)
}

/// `GET /connection/uni_sse?cf_connect=…` or `POST /connection/uni_sse`.
pub async fn uni_sse(request: Request<Incoming>, node: Arc<Node>) -> Response<ResponseBody> {
    if node.shutdown.is_cancelled() {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    let limit = node.config.uni_sse.max_request_body_size;
    let body = match *request.method() {
        Method::GET => match query_param(&request, "cf_connect") {
            Some(connect) if connect.len() > limit => {
                return plain(StatusCode::PAYLOAD_TOO_LARGE, "cf_connect too large");
            }
            connect => Bytes::from(connect.unwrap_or_default()),
        },
        Method::POST => match read_body(request.into_body(), limit).await {
            Ok(body) => body,
            Err((status, text)) => return plain(status, text),
        },
        _ => return plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    };
    start_uni(node, "uni_sse", &body, Framing::EventStream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framings() {
        let messages = [Bytes::from_static(b"{\"a\":1}"), Bytes::from_static(b"{}")];
        assert_eq!(&Framing::JsonLines.chunk(&messages)[..], b"{\"a\":1}\n{}\n");
        assert_eq!(&Framing::EventStream.chunk(&messages)[..], b"data: {\"a\":1}\n\ndata: {}\n\n");
        assert_eq!(&Framing::Delimited.chunk(&[Bytes::from_static(&[1, 8])])[..], &[1, 8]);
    }

    #[test]
    fn emulation_requests_in_both_encodings() {
        let json = br#"{"node":"n1","session":"s1","data":"{\"id\":2,\"subscribe\":{\"channel\":\"a\"}}"}"#;
        let (node, session, data) = parse_emulation(json, false).unwrap();
        assert_eq!((node.as_str(), session.as_str()), ("n1", "s1"));
        assert_eq!(&data[..], br#"{"id":2,"subscribe":{"channel":"a"}}"#);

        let request = EmulationRequest {
            node: "n1".into(),
            session: "s1".into(),
            data: Bytes::from_static(&[2, 8, 3]),
        };
        let (_, _, data) = parse_emulation(&request.encode_to_vec(), true).unwrap();
        assert_eq!(&data[..], &[2, 8, 3]);

        assert!(parse_emulation(b"not json", false).is_none());
        assert!(parse_emulation(br#"{"node":"n1","data":"x"}"#, false).is_none(), "session is required");
    }

    #[test]
    fn connect_requests() {
        assert_eq!(parse_connect_request(b"").unwrap(), ConnectRequest::default());
        assert_eq!(parse_connect_request(br#"{"token":"t"}"#).unwrap().token, "t");
        assert!(parse_connect_request(b"{oops").is_none());
    }
}
