//! HTTP JSON front end of the server API: `POST /api/<method>` and the legacy `POST /api`.
//!
//! Shapes are Centrifugo's: `{"result":{…}}` or `{"error":{"code":N,"message":"…"}}` with status
//! 200 (batch: `{"replies":[…]}`); with `X-Centrifugo-Error-Mode: transport` errors become the
//! bare error object with an HTTP status instead. Non-POST → 405 (before auth), missing or wrong
//! key → 401 with an empty body, malformed body → 400, body over [`MAX_BODY`] → 413.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use subtle::ConstantTimeEq;

use super::{ApiError, Executor};
use crate::proto::api;
use crate::telemetry::{self, SpanContext, SpanKind};

/// Largest API request body accepted.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

#[derive(Serialize)]
struct Envelope<T> {
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<api::Error>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<T>,
}

fn respond(
    status: StatusCode,
    content_type: Option<&'static str>,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Some(content_type) = content_type {
        response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    }
    response
}

fn json_response(body: Vec<u8>) -> Response<Full<Bytes>> {
    respond(StatusCode::OK, Some("application/json"), body)
}

fn bad_request() -> Response<Full<Bytes>> {
    respond(StatusCode::BAD_REQUEST, Some("text/plain; charset=utf-8"), "Bad Request")
}

/// HTTP status of an API error in transport error mode.
fn transport_status(code: u32) -> StatusCode {
    match code {
        102 | 104 => StatusCode::NOT_FOUND,
        107 | 108 => StatusCode::BAD_REQUEST,
        112 => StatusCode::RANGE_NOT_SATISFIABLE,
        113 => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Checks the API key: `X-API-Key` first (if present it must match), then
/// `Authorization: apikey <key>`, then the `api_key` query parameter. Constant-time compare.
pub fn authorized(headers: &HeaderMap, query: Option<&str>, key: &str) -> bool {
    if key.is_empty() {
        return false;
    }
    let matches = |candidate: &[u8]| bool::from(candidate.ct_eq(key.as_bytes()));
    if let Some(value) = headers.get("x-api-key") {
        if matches(value.as_bytes()) {
            return true;
        }
    } else if let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let parts: Vec<&str> = value.split_whitespace().collect();
        if parts.len() == 2 && parts[0].eq_ignore_ascii_case("apikey") && matches(parts[1].as_bytes()) {
            return true;
        }
    }
    query
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.strip_prefix("api_key="))
        .any(|value| matches(value.as_bytes()))
}

/// Serves one API request inside a server span when the API is traced (`opentelemetry.api`):
/// named `<HTTP method> <route>` as Centrifugo's, a child of the request's `traceparent`, and
/// failed when a command answers an error or the status is 5xx.
pub async fn serve_traced(
    request: Request<Incoming>,
    executor: &Executor,
    method: Option<&str>,
    route: &str,
) -> Response<Full<Bytes>> {
    let node = executor.node();
    let Some(tracer) = node.tracer.as_ref().filter(|_| node.config.opentelemetry.api) else {
        return serve(request, executor, method).await;
    };
    let parent = SpanContext::from_headers(request.headers());
    let mut span = tracer.span(format!("{} {route}", request.method()), SpanKind::Server, parent);
    span.set_attribute("http.request.method", request.method().as_str());
    span.set_attribute("url.scheme", "http");
    span.set_attribute("url.path", request.uri().path());
    span.set_attribute("http.route", route);
    if let Some(agent) = request.headers().get(header::USER_AGENT).and_then(|v| v.to_str().ok()) {
        span.set_attribute("user_agent.original", agent);
    }
    let (response, mut span) = telemetry::in_span(span, serve(request, executor, method)).await;
    let status = response.status();
    span.set_attribute("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        span.set_error(status.to_string());
    }
    response
}

/// Serves one API request; `method` is the path segment after the prefix (`None` = legacy).
pub async fn serve(
    request: Request<Incoming>,
    executor: &Executor,
    method: Option<&str>,
) -> Response<Full<Bytes>> {
    if request.method() != Method::POST {
        return respond(StatusCode::METHOD_NOT_ALLOWED, None, Bytes::new());
    }
    let config = &executor.node().config.http_api;
    if !config.insecure && !authorized(request.headers(), request.uri().query(), &config.key) {
        return respond(StatusCode::UNAUTHORIZED, None, Bytes::new());
    }
    let transport_mode = config.error_mode == "transport"
        || request
            .headers()
            .get("x-centrifugo-error-mode")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"transport"));
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            if error.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                return respond(StatusCode::PAYLOAD_TOO_LARGE, None, Bytes::new());
            }
            return respond(StatusCode::INTERNAL_SERVER_ERROR, None, Bytes::new());
        }
    };
    answer(&body, executor, method, transport_mode).await
}

/// Answers an authenticated API request's body: `method` is the path segment after the
/// prefix (`None`: the legacy `POST /api` with newline-separated commands). Every body gets a
/// JSON answer or 400, never a panic (fuzzed in `server/tests/fuzz.rs`).
pub async fn answer(
    body: &[u8],
    executor: &Executor,
    method: Option<&str>,
    transport_mode: bool,
) -> Response<Full<Bytes>> {
    match method {
        None => legacy(body, executor).await,
        Some(method) => dispatch(method, body, executor, transport_mode).await,
    }
}

/// Every method the API serves by path (`/api/<method>`).
pub fn method_names() -> impl Iterator<Item = &'static str> {
    LEGACY_METHODS.iter().map(|(_, name)| *name).chain(["batch"])
}

/// One API request on `/api/<method>`: decoded, run, recorded in the metrics, answered.
struct Call<'a> {
    executor: &'a Executor,
    method: &'a str,
    body: &'a [u8],
    transport_mode: bool,
}

async fn call<Req, Res, Fut>(call: Call<'_>, run: impl FnOnce(Req) -> Fut) -> Response<Full<Bytes>>
where
    Req: DeserializeOwned,
    Res: Serialize,
    Fut: std::future::Future<Output = Result<Res, ApiError>>,
{
    let Call { executor, method, body, transport_mode } = call;
    let request: Req = match serde_json::from_slice(if body.is_empty() { b"{}" } else { body }) {
        Ok(request) => request,
        Err(_) => {
            executor.observe_failure(method, "unmarshal");
            return bad_request();
        }
    };
    let started = std::time::Instant::now();
    let outcome = run(request).await;
    executor.observe(method, started, &outcome);
    let envelope = match outcome {
        Ok(result) => Envelope { error: None, result: Some(result) },
        Err(error) if transport_mode => {
            let body = serde_json::to_vec(&error.to_proto()).expect("error serializes");
            return respond(transport_status(error.code), Some("application/json"), body);
        }
        Err(error) => Envelope { error: Some(error.to_proto()), result: None },
    };
    match serde_json::to_vec(&envelope) {
        Ok(body) => json_response(body),
        Err(_) => {
            // Only possible for a binary payload that cannot be embedded as JSON.
            json_response(
                serde_json::to_vec(&Envelope::<()> {
                    error: Some(ApiError::INTERNAL.to_proto()),
                    result: None,
                })
                .expect("serializes"),
            )
        }
    }
}

async fn dispatch(
    method: &str,
    body: &[u8],
    executor: &Executor,
    transport_mode: bool,
) -> Response<Full<Bytes>> {
    let here = || Call { executor, method, body, transport_mode };
    match method {
        "publish" => call(here(), |r| executor.publish(r)).await,
        "broadcast" => call(here(), |r| executor.broadcast(r)).await,
        "subscribe" => call(here(), |r| executor.subscribe(r)).await,
        "unsubscribe" => call(here(), |r| executor.unsubscribe(r)).await,
        "disconnect" => call(here(), |r| executor.disconnect(r)).await,
        "presence" => call(here(), |r| executor.presence(r)).await,
        "presence_stats" => call(here(), |r| executor.presence_stats(r)).await,
        "history" => call(here(), |r| executor.history(r)).await,
        "history_remove" => call(here(), |r| executor.history_remove(r)).await,
        "info" => call(here(), |_: api::InfoRequest| executor.info()).await,
        "rpc" => call(here(), |r| executor.rpc(r)).await,
        "refresh" => call(here(), |r| executor.refresh(r)).await,
        "channels" => call(here(), |r| executor.channels(r)).await,
        "map_publish" => call(here(), |r| executor.map_publish(r)).await,
        "map_remove" => call(here(), |r| executor.map_remove(r)).await,
        "map_read_state" => call(here(), |r| executor.map_read_state(r)).await,
        "map_read_stream" => call(here(), |r| executor.map_read_stream(r)).await,
        "map_stats" => call(here(), |r| executor.map_stats(r)).await,
        "map_clear" => call(here(), |r| executor.map_clear(r)).await,
        "shared_poll_publish" => call(here(), |r| executor.shared_poll_publish(r)).await,
        "batch" => {
            #[derive(serde::Deserialize)]
            struct RawBatch {
                #[serde(default)]
                commands: Vec<Option<api::Command>>,
                #[serde(default)]
                parallel: bool,
            }
            let request: RawBatch = match serde_json::from_slice(body) {
                Ok(request) => request,
                Err(_) => return bad_request(),
            };
            let response = executor.batch_commands(request.commands, request.parallel).await;
            match serde_json::to_vec(&response) {
                Ok(body) => json_response(body),
                Err(_) => respond(StatusCode::INTERNAL_SERVER_ERROR, None, Bytes::new()),
            }
        }
        _ => respond(StatusCode::NOT_FOUND, Some("text/plain; charset=utf-8"), "404 page not found"),
    }
}

/// Legacy method numbers of `POST /api` (Centrifugo's `Command.MethodType`).
const LEGACY_METHODS: &[(u64, &str)] = &[
    (0, "publish"),
    (1, "broadcast"),
    (2, "unsubscribe"),
    (3, "disconnect"),
    (4, "presence"),
    (5, "presence_stats"),
    (6, "history"),
    (7, "history_remove"),
    (8, "channels"),
    (9, "info"),
    (10, "rpc"),
    (11, "subscribe"),
    (12, "refresh"),
    (33, "map_publish"),
    (34, "map_remove"),
    (35, "map_read_state"),
    (36, "map_read_stream"),
    (37, "map_stats"),
    (38, "map_clear"),
    (39, "shared_poll_publish"),
];

#[derive(serde::Deserialize)]
struct LegacyCommand {
    #[serde(default)]
    id: u32,
    #[serde(default)]
    method: Option<serde_json::Value>,
    #[serde(default)]
    params: Option<Box<RawValue>>,
}

#[derive(Serialize)]
struct LegacyReply<'a> {
    #[serde(skip_serializing_if = "crate::proto::json::is_default")]
    id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a RawValue>,
}

async fn legacy(body: &[u8], executor: &Executor) -> Response<Full<Bytes>> {
    let mut lines = Vec::new();
    for line in body.split(|b| *b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(command) = serde_json::from_slice::<LegacyCommand>(line) else {
            return bad_request();
        };
        lines.push(legacy_one(command, executor).await);
    }
    if lines.is_empty() {
        return bad_request();
    }
    json_response(lines.join(&b'\n'))
}

async fn legacy_one(command: LegacyCommand, executor: &Executor) -> Vec<u8> {
    let name = match &command.method {
        None | Some(serde_json::Value::Null) => Some("publish"),
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().and_then(|n| LEGACY_METHODS.iter().find(|(num, _)| *num == n)).map(|(_, name)| *name)
        }
        Some(serde_json::Value::String(s)) => {
            let lower = s.to_ascii_lowercase();
            LEGACY_METHODS.iter().find(|(_, name)| *name == lower).map(|(_, name)| *name)
        }
        Some(_) => None,
    };
    let error = |error: ApiError| {
        let raw = serde_json::to_string(&error.to_proto()).expect("error serializes");
        let raw = RawValue::from_string(raw).expect("valid JSON");
        serde_json::to_vec(&LegacyReply { id: command.id, error: Some(&raw), result: None })
            .expect("serializes")
    };
    let Some(name) = name else { return error(ApiError::NOT_FOUND) };
    telemetry::annotate("method", name.to_ascii_uppercase());
    let params = command.params.as_ref().map(|p| p.get()).unwrap_or("{}");
    let Ok(api_command) = serde_json::from_str::<api::Command>(&format!("{{\"{name}\":{params}}}")) else {
        return error(ApiError::BAD_REQUEST);
    };
    let reply = executor.command(api_command).await;
    let Ok(text) = serde_json::to_string(&reply) else { return error(ApiError::INTERNAL) };
    let Ok(fields) = serde_json::from_str::<BTreeMap<String, Box<RawValue>>>(&text) else {
        return error(ApiError::INTERNAL);
    };
    match fields.iter().next() {
        Some((key, value)) if key == "error" => {
            serde_json::to_vec(&LegacyReply { id: command.id, error: Some(value), result: None })
                .expect("serializes")
        }
        Some((_, value)) => {
            serde_json::to_vec(&LegacyReply { id: command.id, error: None, result: Some(value) })
                .expect("serializes")
        }
        None => error(ApiError::INTERNAL),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, v.parse().unwrap());
        }
        map
    }

    #[test]
    fn api_key_sources() {
        assert!(authorized(&headers(&[("x-api-key", "k")]), None, "k"));
        assert!(authorized(&headers(&[("authorization", "apikey k")]), None, "k"));
        assert!(authorized(&headers(&[("authorization", "ApiKey k")]), None, "k"));
        assert!(authorized(&headers(&[]), Some("a=1&api_key=k"), "k"));
        assert!(!authorized(&headers(&[("x-api-key", "bad")]), None, "k"));
        // A wrong X-API-Key is not rescued by Authorization, only by the query parameter.
        assert!(!authorized(&headers(&[("x-api-key", "bad"), ("authorization", "apikey k")]), None, "k"));
        assert!(!authorized(&headers(&[]), None, ""));
    }
}
