//! What every HTTP client-transport endpoint does before its own work: answer a CORS preflight, refuse
//! a method it does not take (405), refuse new sessions while shutting down (503), check the
//! `Origin` against `client.allowed_origins` (403) and, for CORS endpoints, echo it back. Also
//! the small request helpers they share (bounded body, query parameters, plain answers).

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use super::origin_allowed;
use crate::node::Node;

/// Response bodies of the HTTP listener (whole or streamed).
pub type ResponseBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

/// Why a request is refused: the status and text of the answer.
pub type Refusal = (StatusCode, &'static str);

/// A plain-text answer.
pub fn plain(status: StatusCode, text: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())).boxed_unsync());
    *response.status_mut() = status;
    response
}

/// The answer to a refused request.
pub fn refuse((status, text): Refusal) -> Response<ResponseBody> {
    plain(status, text)
}

/// How an endpoint treats the `Origin` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origins {
    /// Must be allowed (or absent).
    Checked,
    /// Must be allowed (or absent); answers preflights and echoes it in CORS headers.
    Cors,
}

/// The shared checks of one endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    /// Methods it serves (`OPTIONS` is handled here for CORS endpoints).
    pub methods: &'static [Method],
    pub origins: Origins,
    /// Starts sessions, so it answers 503 once the node shuts down, and takes part in
    /// `client.connection_rate_limit` and `client.connection_limit` (503 before anything else).
    pub opens_sessions: bool,
}

/// The answer to a request that did not pass (boxed: it is much larger than the success).
pub type Answered = Box<Response<ResponseBody>>;

/// A request that passed its endpoint's checks.
#[derive(Debug)]
pub struct Admitted {
    pub request: Request<Incoming>,
    /// The origin to echo on a CORS endpoint.
    pub cors: Option<HeaderValue>,
}

impl Endpoint {
    /// Runs the checks; `Err` is the answer to send instead.
    pub fn admit(&self, request: Request<Incoming>, node: &Node) -> Result<Admitted, Answered> {
        if self.opens_sessions && node.admit_connection().is_err() {
            // Before CORS: the refusal carries no headers, as Centrifugo's.
            return Err(Box::new(plain(StatusCode::SERVICE_UNAVAILABLE, "")));
        }
        if self.origins == Origins::Cors && request.method() == Method::OPTIONS {
            return Err(Box::new(self.preflight(&request, node)));
        }
        if !self.methods.contains(request.method()) {
            return Err(Box::new(plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")));
        }
        if self.opens_sessions && node.shutdown.is_cancelled() {
            return Err(Box::new(plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down")));
        }
        let cors = check_origin(request.headers(), node).map_err(|refusal| Box::new(refuse(refusal)))?;
        let cors = if self.origins == Origins::Cors { cors } else { None };
        Ok(Admitted { request, cors })
    }

    /// Answers a CORS preflight (204) for this endpoint's methods.
    fn preflight(&self, request: &Request<Incoming>, node: &Node) -> Response<ResponseBody> {
        let origin = match check_origin(request.headers(), node) {
            Ok(origin) => origin,
            Err(refusal) => return refuse(refusal),
        };
        let mut response = plain(StatusCode::NO_CONTENT, "");
        let headers = response.headers_mut();
        if let Some(origin) = origin {
            allow_origin(headers, origin);
        }
        let methods: Vec<&str> = self.methods.iter().chain([&Method::OPTIONS]).map(Method::as_str).collect();
        let methods = HeaderValue::from_str(&methods.join(", ")).expect("method names are valid headers");
        headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, methods);
        let requested = request.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS).cloned();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            requested.unwrap_or_else(|| HeaderValue::from_static("content-type")),
        );
        headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("300"));
        response
    }
}

/// The `Origin` to echo in CORS headers, or a 403 refusal when the origin is not allowed.
fn check_origin(headers: &HeaderMap, node: &Node) -> Result<Option<HeaderValue>, Refusal> {
    let Some(origin) = headers.get(header::ORIGIN) else { return Ok(None) };
    let allowed =
        origin.to_str().is_ok_and(|origin| origin_allowed(Some(origin), &node.config.client.allowed_origins));
    if allowed {
        Ok(Some(origin.clone()))
    } else {
        tracing::info!(origin = %String::from_utf8_lossy(origin.as_bytes()), "origin rejected");
        Err((StatusCode::FORBIDDEN, "origin not allowed"))
    }
}

/// CORS answer for an allowed origin: echoed, with credentials allowed (as Centrifugo does).
pub fn allow_origin(headers: &mut HeaderMap, origin: HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
}

/// `response` with the CORS headers for `cors`, if any.
pub fn with_cors(mut response: Response<ResponseBody>, cors: Option<HeaderValue>) -> Response<ResponseBody> {
    if let Some(origin) = cors {
        allow_origin(response.headers_mut(), origin);
    }
    response
}

/// Reads a request body of at most `limit` bytes (413 beyond it, 400 when the client goes
/// away mid-body, which hyper reports as an error).
pub async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, Refusal> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            Err((StatusCode::PAYLOAD_TOO_LARGE, "request body too large"))
        }
        Err(_) => Err((StatusCode::BAD_REQUEST, "could not read the request body")),
    }
}

/// A query parameter, percent-decoded (`+` as a space, as forms send it).
pub fn query_param<B>(request: &Request<B>, name: &str) -> Option<String> {
    crate::common::form_value(request.uri().query()?, name)
}

/// Whether the query has the flag `pair` (`key=value`, exactly).
pub fn query_has<B>(request: &Request<B>, pair: &str) -> bool {
    request.uri().query().unwrap_or("").split('&').any(|p| p == pair)
}

/// Whether the body is Protobuf (`Content-Type: application/octet-stream`).
pub fn is_protobuf<B>(request: &Request<B>) -> bool {
    request.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes() == b"application/octet-stream")
}
