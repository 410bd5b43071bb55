//! HTTP routing: which endpoint a request on an HTTP listener reaches. The external port serves
//! the client transports; the internal one (or the same port, when no internal port is set)
//! serves `/health`, `/metrics`, the HTTP server API and the admin UI (`admin.external` moves
//! it to the external port).

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::api::Executor;
use crate::node::Node;
use crate::transport::http_entry::{Endpoint, Origins, ResponseBody, allow_origin, plain};
use crate::transport::{http_stream, uni_http, uni_websocket, websocket};

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy)]
pub(super) struct Routes {
    pub external: bool,
    pub internal: bool,
}

fn not_found() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"404 page not found")));
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

/// Whether `path` is the endpoint configured as `prefix` (a trailing `/` is ignored).
fn is_endpoint(path: &str, prefix: &str) -> bool {
    path == prefix.trim_end_matches('/')
}

pub(super) async fn route(
    request: Request<Incoming>,
    executor: &Executor,
    routes: Routes,
) -> Response<ResponseBody> {
    let path = request.uri().path().to_owned();
    let request = if routes.external {
        match route_transport(request, executor.node(), &path).await {
            Ok(response) => return response,
            Err(request) => request,
        }
    } else {
        request
    };
    route_api(request, executor, routes, &path).await.map(BodyExt::boxed_unsync)
}

/// The client transports' endpoints; `Err` gives the request back when none matches.
async fn route_transport(
    request: Request<Incoming>,
    node: &std::sync::Arc<Node>,
    path: &str,
) -> Result<Response<ResponseBody>, Request<Incoming>> {
    let config = &node.config;
    let node = node.clone();
    if !config.websocket.disabled && is_endpoint(path, &config.websocket.handler_prefix) {
        return Ok(websocket::upgrade(request, node));
    }
    if config.uni_websocket.enabled && is_endpoint(path, &config.uni_websocket.handler_prefix) {
        return Ok(uni_websocket::upgrade(request, node));
    }
    if config.http_stream.enabled && is_endpoint(path, &config.http_stream.handler_prefix) {
        return Ok(http_stream::http_stream(request, node).await);
    }
    if config.sse.enabled && is_endpoint(path, &config.sse.handler_prefix) {
        return Ok(http_stream::sse(request, node).await);
    }
    if (config.http_stream.enabled || config.sse.enabled)
        && is_endpoint(path, &config.emulation.handler_prefix)
    {
        return Ok(http_stream::emulation(request, node).await);
    }
    if config.uni_http_stream.enabled && is_endpoint(path, &config.uni_http_stream.handler_prefix) {
        return Ok(uni_http::uni_http_stream(request, node).await);
    }
    if config.uni_sse.enabled && is_endpoint(path, &config.uni_sse.handler_prefix) {
        return Ok(uni_http::uni_sse(request, node).await);
    }
    if config.init.enabled && is_endpoint(path, &config.init.handler_prefix) {
        return Ok(connection_init(request, &node));
    }
    Err(request)
}

/// `init`: `{}` to a GET, so a client can open (and a load balancer check) a connection before
/// its upgrade. Admitted like a connection (rate limit, origin, CORS), as Centrifugo's.
fn connection_init(request: Request<Incoming>, node: &Node) -> Response<ResponseBody> {
    const INIT: Endpoint = Endpoint { methods: &[Method::GET], origins: Origins::Cors, opens_sessions: true };
    let admitted = match INIT.admit(request, node) {
        Ok(admitted) => admitted,
        Err(answer) => return *answer,
    };
    let mut response = plain(StatusCode::OK, "{}");
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    if let Some(origin) = admitted.cors {
        allow_origin(headers, origin);
    }
    response
}

/// 200 `{}` while the engines answer; 500 with the failing parts (Centrifugo's shape) while
/// they do not, so a load balancer can route around a node cut off from Redis.
fn health(node: &Node) -> Response<Full<Bytes>> {
    let problems = node.health_problems();
    let (status, body) = if problems.is_empty() {
        (StatusCode::OK, Bytes::from_static(b"{}"))
    } else {
        let body = serde_json::json!({ "errors": problems }).to_string();
        (StatusCode::INTERNAL_SERVER_ERROR, Bytes::from(body))
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}

/// `/metrics`: the node's metrics in Prometheus' text format, to any method (as Centrifugo).
fn metrics(node: &Node) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(node.metrics_exposition())));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// Health, metrics, the HTTP server API and the admin UI.
async fn route_api(
    request: Request<Incoming>,
    executor: &Executor,
    routes: Routes,
    path: &str,
) -> Response<Full<Bytes>> {
    let node = executor.node();
    let config = &node.config;
    if routes.internal && config.health.enabled && is_endpoint(path, &config.health.handler_prefix) {
        return health(node);
    }
    if routes.internal && config.prometheus.enabled && is_endpoint(path, &config.prometheus.handler_prefix) {
        return metrics(node);
    }
    if (routes.internal || config.http_api.external) && !config.http_api.disabled {
        let prefix = config.http_api.handler_prefix.trim_end_matches('/');
        if path == prefix {
            return crate::api::http::serve_traced(request, executor, None, prefix).await;
        }
        if let Some(method) = path.strip_prefix(prefix).and_then(|rest| rest.strip_prefix('/')) {
            let method = method.to_owned();
            return crate::api::http::serve_traced(request, executor, Some(&method), path).await;
        }
    }
    // Last: with an empty prefix the admin UI's subtree is every path left.
    let admin = &config.admin;
    if admin.enabled && (if admin.external { routes.external } else { routes.internal }) {
        return super::admin::route(request, executor, path).await.unwrap_or_else(|_| not_found());
    }
    not_found()
}
