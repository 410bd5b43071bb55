//! The unidirectional HTTP transports: `uni_http_stream` (`POST`, a JSON `ConnectRequest`,
//! answered with JSON push lines) and `uni_sse` (`GET ?cf_connect=<JSON>`, absent = an empty
//! request, or `POST`; answered with `\r\n`, then `data: <push>\n\n`). A body that is not a
//! connect request is refused with 400 before any stream starts, as Centrifugo does. With
//! `connect_code_to_http_response`, a failed connect is answered with an HTTP status instead.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use super::http_entry::{Endpoint, Origins, ResponseBody, plain, query_param, read_body, refuse};
use super::http_stream::stream_response;
use super::outgoing::{Outgoing, Shape};
use crate::config::{Config, ConnectCodeToHttpResponse};
use crate::node::Node;
use crate::protocol::framing::Framing;
use crate::protocol::{self, ProtocolType};
use crate::proxy::{HeaderSource, capture_headers};
use crate::session::{ConnectOutcome, Direction, Inbound, Session, TransportInfo};

// Browsers reach these too (EventSource, fetch), with cookies: an origin not allowed gets 403
// (Centrifugo only leaves out the CORS headers, which still lets the connect happen).
const UNI_HTTP_STREAM: Endpoint =
    Endpoint { methods: &[Method::POST], origins: Origins::Cors, opens_sessions: true };
const UNI_SSE: Endpoint =
    Endpoint { methods: &[Method::GET, Method::POST], origins: Origins::Cors, opens_sessions: true };

/// Starts a unidirectional session from a JSON connect request.
/// `headers`: those of the HTTP request the proxies forward. With `http_responses` enabled,
/// the response waits for the connect, and a failed one is answered with a status instead.
async fn start(
    node: Arc<Node>,
    name: &'static str,
    request: &[u8],
    framing: Framing,
    headers: Vec<(String, String)>,
    http_responses: fn(&Config) -> &ConnectCodeToHttpResponse,
) -> Response<ResponseBody> {
    let Some(connect) = protocol::decode_connect_request(request) else {
        return plain(StatusCode::BAD_REQUEST, "malformed connect request");
    };
    let info = TransportInfo::new(name, ProtocolType::Json, Direction::Unidirectional)
        .with_headers(headers, HeaderSource::Http);
    let (mut session, handle) = Session::new(node.clone(), info);
    let connected = http_responses(&node.config).enabled.then(|| session.report_connect());
    let first = Inbound::connect(connect);
    let inbound = stream::once(async move { first }).chain(stream::pending());
    node.tasks.spawn(session.run(Box::pin(inbound)));
    if let Some(connected) = connected {
        match connected.await {
            Ok(ConnectOutcome::Connected) => {}
            Ok(ConnectOutcome::Refused { code, text }) => {
                return refused_connect(http_responses(&node.config), code, text);
            }
            // The session ended before its connect did (shutdown).
            Err(_) => return plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
        }
    }
    stream_response(Outgoing::new(handle, ProtocolType::Json, Shape::Pushes), framing, None, None)
}

/// The answer to a failed connect under `connect_code_to_http_response`: the transform for its
/// code (its body, or the error's own text), else 500.
fn refused_connect(
    http_responses: &ConnectCodeToHttpResponse,
    code: u32,
    text: String,
) -> Response<ResponseBody> {
    let transform = http_responses.transforms.iter().find(|transform| transform.code == code);
    let Some(to) = transform.map(|transform| &transform.to) else {
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
    };
    let body = if to.body.is_empty() { text } else { to.body.clone() };
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *response.status_mut() =
        StatusCode::from_u16(to.status_code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
}

fn uni_http_stream_responses(config: &Config) -> &ConnectCodeToHttpResponse {
    &config.uni_http_stream.connect_code_to_http_response
}

fn uni_sse_responses(config: &Config) -> &ConnectCodeToHttpResponse {
    &config.uni_sse.connect_code_to_http_response
}

/// `POST /connection/uni_http_stream`.
pub async fn uni_http_stream(request: Request<Incoming>, node: Arc<Node>) -> Response<ResponseBody> {
    let request = match UNI_HTTP_STREAM.admit(request, &node) {
        Ok(admitted) => admitted.request,
        Err(response) => return *response,
    };
    let headers = capture_headers(node.proxies.forwarded_names(), request.headers());
    let body = match read_body(request.into_body(), node.config.uni_http_stream.max_request_body_size).await {
        Ok(body) => body,
        Err(refusal) => return refuse(refusal),
    };
    start(node, "uni_http_stream", &body, Framing::JsonLines, headers, uni_http_stream_responses).await
}

/// `GET /connection/uni_sse?cf_connect=…` or `POST /connection/uni_sse`.
pub async fn uni_sse(request: Request<Incoming>, node: Arc<Node>) -> Response<ResponseBody> {
    let request = match UNI_SSE.admit(request, &node) {
        Ok(admitted) => admitted.request,
        Err(response) => return *response,
    };
    let limit = node.config.uni_sse.max_request_body_size;
    let headers = capture_headers(node.proxies.forwarded_names(), request.headers());
    let body = if request.method() == Method::GET {
        match query_param(&request, "cf_connect") {
            Some(connect) if connect.len() > limit => {
                return plain(StatusCode::PAYLOAD_TOO_LARGE, "cf_connect too large");
            }
            connect => Bytes::from(connect.unwrap_or_default()),
        }
    } else {
        match read_body(request.into_body(), limit).await {
            Ok(body) => body,
            Err(refusal) => return refuse(refusal),
        }
    };
    start(node, "uni_sse", &body, Framing::EventStream, headers, uni_sse_responses).await
}
