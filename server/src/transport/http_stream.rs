//! The emulated bidirectional HTTP transports: `http_stream` and `sse`. The server-to-client
//! side is one long streaming response; client commands arrive separately, at `/emulation`,
//! and reach the session through the node's emulation registry
//! ([`crate::hub::EmulationSessions`]) under the session id announced in the connect result.
//!
//! | transport | request | response framing |
//! |---|---|---|
//! | `http_stream` | `POST`, body = first command frame (Protobuf if `application/octet-stream`) | JSON lines, or varint-delimited Protobuf |
//! | `sse` | `GET ?cf_connect=<JSON>` or `POST` body (JSON only) | `\r\n`, then `data: <reply>\n\n` |
//!
//! Opening requests and `/emulation` bodies are bounded by each section's
//! `max_request_body_size` (413).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};

use super::http_entry::{
    Endpoint, Origins, ResponseBody, is_protobuf, plain, query_param, read_body, refuse, with_cors,
};
use super::outgoing::{Outgoing, Shape};
use crate::hub::{EmulationRegistration, Undelivered};
use crate::node::{Node, cluster};
use crate::proto::cluster::EmulationFrame;
use crate::proto::cluster::control_message::Command as ControlCommand;
use crate::protocol::framing::{EVENT_STREAM_PREAMBLE, Framing};
use crate::protocol::{self, ProtocolType};
use crate::proxy::{HeaderSource, capture_headers};
use crate::session::{Direction, Inbound, Session, TransportInfo};

const HTTP_STREAM: Endpoint =
    Endpoint { methods: &[Method::POST], origins: Origins::Cors, opens_sessions: true };
const SSE: Endpoint =
    Endpoint { methods: &[Method::GET, Method::POST], origins: Origins::Cors, opens_sessions: true };
/// Commands for sessions that exist already: accepted while shutting down.
const EMULATION: Endpoint =
    Endpoint { methods: &[Method::POST], origins: Origins::Cors, opens_sessions: false };

/// The streaming 200 response: no-cache headers, then one chunk per outbound batch. `guard`
/// lives as long as the body (registry clean-up).
pub(super) fn stream_response(
    outgoing: Outgoing,
    framing: Framing,
    cors: Option<HeaderValue>,
    guard: Option<EmulationRegistration>,
) -> Response<ResponseBody> {
    let preamble = (framing == Framing::EventStream).then(|| Bytes::from_static(EVENT_STREAM_PREAMBLE));
    let first = stream::iter(preamble.map(|p| Ok::<_, Infallible>(Frame::data(p))));
    let batches = stream::unfold((outgoing, guard), move |(mut outgoing, guard)| async move {
        let batch = outgoing.next_batch().await?;
        Some((Ok(Frame::data(framing.encode(&batch))), (outgoing, guard)))
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
    with_cors(response, cors)
}

/// Starts an emulated session whose first frame is `frame`; returns its response.
fn start_emulation(
    node: Arc<Node>,
    name: &'static str,
    protocol: ProtocolType,
    framing: Framing,
    frame: Bytes,
    cors: Option<HeaderValue>,
    headers: Vec<(String, String)>,
) -> Response<ResponseBody> {
    let id = uuid::Uuid::new_v4().to_string();
    let info = TransportInfo::new(name, protocol, Direction::Bidirectional)
        .emulated(id.clone())
        .with_headers(headers, HeaderSource::Http);
    let (session, handle) = Session::new(node.clone(), info);
    let (registration, frames) = node.emulation.register(id);
    let commands = stream::unfold(frames, |mut frames| async move {
        let frame = frames.recv().await?;
        Some((Inbound::Frame(frame), frames))
    });
    // The stream never ends on its own: the session ends when the response body is dropped
    // (client gone) or on a disconnect.
    let inbound = stream::once(async move { Inbound::Frame(frame) }).chain(commands).chain(stream::pending());
    node.tasks.spawn(session.run(Box::pin(inbound)));
    stream_response(Outgoing::new(handle, protocol, Shape::Replies), framing, cors, Some(registration))
}

/// `POST /connection/http_stream`.
pub async fn http_stream(request: Request<Incoming>, node: Arc<Node>) -> Response<ResponseBody> {
    let (request, cors) = match HTTP_STREAM.admit(request, &node) {
        Ok(admitted) => (admitted.request, admitted.cors),
        Err(response) => return *response,
    };
    let protocol = if is_protobuf(&request) { ProtocolType::Protobuf } else { ProtocolType::Json };
    let headers = capture_headers(node.proxies.forwarded_names(), request.headers());
    let frame = match read_body(request.into_body(), node.config.http_stream.max_request_body_size).await {
        Ok(frame) => frame,
        Err(refusal) => return refuse(refusal),
    };
    start_emulation(node, "http_stream", protocol, Framing::stream(protocol), frame, cors, headers)
}

/// `GET /connection/sse?cf_connect=…` or `POST /connection/sse`.
pub async fn sse(request: Request<Incoming>, node: Arc<Node>) -> Response<ResponseBody> {
    let (request, cors) = match SSE.admit(request, &node) {
        Ok(admitted) => (admitted.request, admitted.cors),
        Err(response) => return *response,
    };
    let limit = node.config.sse.max_request_body_size;
    let headers = capture_headers(node.proxies.forwarded_names(), request.headers());
    let frame = if request.method() == Method::GET {
        match query_param(&request, "cf_connect") {
            Some(connect) if connect.len() <= limit => Bytes::from(connect),
            Some(_) => return plain(StatusCode::PAYLOAD_TOO_LARGE, "cf_connect too large"),
            None => return plain(StatusCode::BAD_REQUEST, "missing cf_connect"),
        }
    } else {
        match read_body(request.into_body(), limit).await {
            Ok(frame) => frame,
            Err(refusal) => return refuse(refusal),
        }
    };
    start_emulation(node, "sse", ProtocolType::Json, Framing::EventStream, frame, cors, headers)
}

/// `POST /emulation`: commands for an emulated session, answered 204 once queued (here, or
/// handed to the session's node through the broker).
pub async fn emulation(request: Request<Incoming>, node: Arc<Node>) -> Response<ResponseBody> {
    let (request, cors) = match EMULATION.admit(request, &node) {
        Ok(admitted) => (admitted.request, admitted.cors),
        Err(response) => return *response,
    };
    let protocol = if is_protobuf(&request) { ProtocolType::Protobuf } else { ProtocolType::Json };
    let body = match read_body(request.into_body(), node.config.emulation.max_request_body_size).await {
        Ok(body) => body,
        Err(refusal) => return refuse(refusal),
    };
    let Some(request) = protocol::decode_emulation_request(protocol, &body) else {
        return plain(StatusCode::BAD_REQUEST, "malformed emulation request");
    };
    if request.node != node.uid && !node.emulation.contains(&request.session) {
        return route_to_node(&node, request, cors).await;
    }
    let response = match node.emulation.deliver(&request.session, request.frame) {
        Ok(()) => plain(StatusCode::NO_CONTENT, ""),
        Err(Undelivered::Busy) => plain(StatusCode::SERVICE_UNAVAILABLE, "session is busy"),
        Err(Undelivered::Unknown) => plain(StatusCode::NOT_FOUND, "unknown session"),
    };
    with_cors(response, cors)
}

/// The session lives on another node: hand the frame over through the broker. As in
/// Centrifugo, the answer is 204 once it is sent; the frame is not acknowledged.
async fn route_to_node(
    node: &Node,
    request: protocol::EmulationFrame,
    cors: Option<HeaderValue>,
) -> Response<ResponseBody> {
    if !node.cluster.knows(&request.node) {
        return plain(StatusCode::NOT_FOUND, "unknown node");
    }
    let frame = EmulationFrame { session: request.session, data: request.frame };
    let response = match cluster::send(node, ControlCommand::Emulation(frame), Some(&request.node)).await {
        Ok(()) => plain(StatusCode::NO_CONTENT, ""),
        Err(_) => plain(StatusCode::SERVICE_UNAVAILABLE, "cannot reach the session's node"),
    };
    with_cors(response, cors)
}
