//! The admin web UI (`admin.enabled`): a login, then the node's figures, channels, presence,
//! history, a publish console and user actions, all through the server API.
//!
//! Endpoints under `P` = `admin.handler_prefix` (without its trailing `/`), as Centrifugo's, so
//! its UI and scripts written against it work here too:
//! - `P/admin/init` (any method): `{"authenticated","edition","insecure"}`;
//! - `P/admin/auth` (POST, form field `password`): `{"token"}`, or 400;
//! - `P/admin/api` (POST, `Authorization: token <t>`): one or more legacy API commands
//!   `{"method","params"}`, answered as `POST /api` answers them; 401 without a valid token;
//! - `P/`, `P/app.js`, `P/app.css`: the UI, embedded in the binary (`admin_ui/`).
//!
//! **Why this is CSRF-safe:** the token travels only in the `Authorization` header, set by the
//! UI's script from `sessionStorage`; no cookie is ever set, so a foreign page's request
//! carries no credentials, and the pages forbid framing and foreign scripts
//! ([`CONTENT_SECURITY_POLICY`]).
//!
//! **Tokens** are Centrifugo's (gorilla securecookie, HMAC-SHA256 over the timestamp and the
//! value under `admin.secret`, valid 30 days), so a token signed by one is valid on the other
//! with the same secret. They are stateless: changing the secret revokes them all.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::api::Executor;
use crate::config::Admin;

/// How long a token is valid (Centrifugo's: 30 days).
const TOKEN_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// A token (or login form) longer than this is refused unread.
const MAX_TOKEN_LEN: usize = 4096;
const MAX_LOGIN_BODY: usize = 1024 * 1024;
/// A failed login answers only after this long, and logins are checked one at a time, so
/// guessing the password is capped at two attempts a second for the whole process.
const FAILED_LOGIN_DELAY: Duration = Duration::from_millis(500);
static LOGIN_GATE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// The signed value: gob's encoding of the string "authorized", base64url, as securecookie
/// stores it.
const AUTHORIZED: &str = "DQwACmF1dGhvcml6ZWQ=";

/// Only this origin's scripts and styles, no framing, no foreign connections.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The UI's files: (path under `P`, content type, bytes).
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("/", "text/html; charset=utf-8", include_bytes!("admin_ui/index.html")),
    ("/app.js", "text/javascript; charset=utf-8", include_bytes!("admin_ui/app.js")),
    ("/app.css", "text/css; charset=utf-8", include_bytes!("admin_ui/app.css")),
];

fn unix_now() -> u64 {
    crate::common::unix_now().max(0) as u64
}

fn mac(secret: &str, timestamp: u64, value: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(format!("token|{timestamp}|{value}").as_bytes());
    mac
}

/// A token for a login now.
pub fn issue_token(secret: &str, now: u64) -> String {
    let signature = mac(secret, now, AUTHORIZED).finalize().into_bytes();
    let mut raw = format!("{now}|{AUTHORIZED}|").into_bytes();
    raw.extend_from_slice(&signature);
    URL_SAFE.encode(raw)
}

/// Whether `token` was issued with `secret` within the last 30 days.
pub fn verify_token(secret: &str, token: &str, now: u64) -> bool {
    if secret.is_empty() || token.len() > MAX_TOKEN_LEN {
        return false;
    }
    let Ok(raw) = URL_SAFE.decode(token.as_bytes()) else { return false };
    let mut parts = raw.splitn(3, |b| *b == b'|');
    let (Some(timestamp), Some(value), Some(signature)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let Some(timestamp) = std::str::from_utf8(timestamp).ok().and_then(|t| t.parse::<u64>().ok()) else {
        return false;
    };
    let Ok(value) = std::str::from_utf8(value) else { return false };
    let signed = mac(secret, timestamp, value).verify_slice(signature).is_ok();
    // Beyond Centrifugo: a timestamp in the future is refused too.
    let fresh = timestamp + TOKEN_LIFETIME.as_secs() >= now && timestamp <= now + 60;
    signed && fresh && value == AUTHORIZED
}

/// Whether a request may use the admin API: insecure mode, or `Authorization: token <t>`.
fn authenticated(config: &Admin, headers: &HeaderMap) -> bool {
    if config.insecure {
        return true;
    }
    let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else { return false };
    let parts: Vec<&str> = value.split_whitespace().collect();
    parts.len() == 2
        && parts[0].eq_ignore_ascii_case("token")
        && verify_token(&config.secret, parts[1], unix_now())
}

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    response
}

fn status_only(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// The admin endpoints' answer to `path`, or `None` when the path is outside `P`.
pub(super) async fn route(
    request: Request<Incoming>,
    executor: &Executor,
    path: &str,
) -> Result<Response<Full<Bytes>>, Request<Incoming>> {
    let config = &executor.node().config.admin;
    let prefix = config.handler_prefix.trim_end_matches('/');
    if !prefix.is_empty() && path == prefix {
        // The UI's links are relative to `P/`.
        let mut response = status_only(StatusCode::TEMPORARY_REDIRECT);
        if let Ok(location) = HeaderValue::try_from(format!("{prefix}/")) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        return Ok(response);
    }
    let Some(rest) = path.strip_prefix(prefix).filter(|rest| rest.starts_with('/')) else {
        return Err(request);
    };
    Ok(match rest {
        "/admin/init" => init(config, request.headers()),
        "/admin/auth" => login(config, request).await,
        "/admin/api" => api(config, request, executor).await,
        _ => asset(rest, request.method()),
    })
}

fn init(config: &Admin, headers: &HeaderMap) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "authenticated": authenticated(config, headers),
        "edition": "oss",
        "insecure": config.insecure,
    });
    respond(StatusCode::OK, "application/json", body.to_string())
}

/// `POST P/admin/auth`: the password (a form field, in any of the encodings a browser sends,
/// or the query) for a token.
async fn login(config: &Admin, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::POST {
        return status_only(StatusCode::METHOD_NOT_ALLOWED);
    }
    let bad = || respond(StatusCode::BAD_REQUEST, "text/plain; charset=utf-8", "Bad Request\n");
    if config.password.is_empty() || config.secret.is_empty() {
        tracing::warn!("admin login refused: admin.password and admin.secret must be set in configuration");
        return bad();
    }
    let query = request.uri().query().map(str::to_owned);
    let content_type =
        request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let Ok(body) = Limited::new(request.into_body(), MAX_LOGIN_BODY).collect().await else { return bad() };
    let password = form_field(&content_type, &body.to_bytes(), "password")
        .or_else(|| query.and_then(|q| crate::common::form_value(&q, "password")));
    let Ok(_turn) = LOGIN_GATE.acquire().await else { return bad() };
    match password {
        Some(given) if bool::from(given.as_bytes().ct_eq(config.password.as_bytes())) => {
            let body = serde_json::json!({ "token": issue_token(&config.secret, unix_now()) });
            respond(StatusCode::OK, "application/json", format!("{body}\n"))
        }
        _ => {
            tokio::time::sleep(FAILED_LOGIN_DELAY).await;
            bad()
        }
    }
}

/// `POST P/admin/api`: the legacy server API, behind the admin token.
async fn api(config: &Admin, request: Request<Incoming>, executor: &Executor) -> Response<Full<Bytes>> {
    if request.method() != Method::POST {
        return status_only(StatusCode::METHOD_NOT_ALLOWED);
    }
    if !authenticated(config, request.headers()) {
        return status_only(StatusCode::UNAUTHORIZED);
    }
    let Ok(body) = Limited::new(request.into_body(), crate::api::http::MAX_BODY).collect().await else {
        return status_only(StatusCode::PAYLOAD_TOO_LARGE);
    };
    let mut response = crate::api::http::answer(&body.to_bytes(), executor, None, false).await;
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn asset(path: &str, method: &Method) -> Response<Full<Bytes>> {
    let Some((_, content_type, bytes)) = ASSETS.iter().find(|(asset, _, _)| *asset == path) else {
        return respond(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "404 page not found\n");
    };
    if method != Method::GET && method != Method::HEAD {
        return status_only(StatusCode::METHOD_NOT_ALLOWED);
    }
    let mut response = respond(StatusCode::OK, content_type, Bytes::from_static(bytes));
    let headers = response.headers_mut();
    headers.insert("content-security-policy", HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    response
}

/// A field of a form body: URL-encoded, or multipart (what a browser's `FormData` sends).
fn form_field(content_type: &str, body: &[u8], name: &str) -> Option<String> {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match essence.as_str() {
        "application/x-www-form-urlencoded" => {
            crate::common::form_value(std::str::from_utf8(body).ok()?, name)
        }
        "multipart/form-data" => multipart_field(content_type, body, name),
        _ => None,
    }
}

/// The text of part `name` of a multipart body (RFC 7578), found by its boundary.
fn multipart_field(content_type: &str, body: &[u8], name: &str) -> Option<String> {
    let boundary = content_type.split(';').find_map(|param| {
        let (key, value) = param.trim().split_once('=')?;
        key.eq_ignore_ascii_case("boundary").then(|| value.trim_matches('"').to_owned())
    })?;
    let delimiter = format!("--{boundary}");
    let text = std::str::from_utf8(body).ok()?;
    let wanted = format!("name=\"{name}\"");
    text.split(delimiter.as_str()).find_map(|part| {
        let (head, content) = part.split_once("\r\n\r\n")?;
        let disposition =
            head.lines().find(|line| line.to_ascii_lowercase().starts_with("content-disposition:"))?;
        let named = disposition.split(';').any(|param| param.trim() == wanted);
        named.then(|| content.strip_suffix("\r\n").unwrap_or(content).to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token Centrifugo 6.9.1 issued from its `/admin/auth` for secret "secret" (at unix time
    /// 1796670101): ours verifies it, and issues the same bytes for that moment.
    const CENTRIFUGO_TOKEN: &str =
        "MTc5NjY3MDEwMXxEUXdBQ21GMWRHaHZjbWw2WldRPXwBDFPopYSz_4bFP_YALfqohRJJlmRi7xJO7ZzfUNS64w==";

    #[test]
    fn tokens_are_centrifugos() {
        assert!(verify_token("secret", CENTRIFUGO_TOKEN, 1_796_670_101 + 10));
        assert!(!verify_token("other", CENTRIFUGO_TOKEN, 1_796_670_101 + 10));
        assert_eq!(issue_token("secret", 1_796_670_101), CENTRIFUGO_TOKEN);
    }

    #[test]
    fn a_token_fails_with_another_secret_when_stale_or_altered() {
        let now = 1_800_000_000;
        let token = issue_token("secret", now);
        assert!(!verify_token("other", &token, now));
        assert!(!verify_token("", &token, now));
        assert!(verify_token("secret", &token, now + TOKEN_LIFETIME.as_secs()));
        assert!(!verify_token("secret", &token, now + TOKEN_LIFETIME.as_secs() + 1));
        assert!(!verify_token("secret", &issue_token("secret", now + 3600), now), "from the future");
        let mut raw = URL_SAFE.decode(&token).unwrap();
        raw[0] = b'2';
        assert!(!verify_token("secret", &URL_SAFE.encode(&raw), now));
        for garbage in ["", "x", "!!!", &"A".repeat(5000)] {
            assert!(!verify_token("secret", garbage, now), "{garbage:?}");
        }
    }

    #[test]
    fn the_password_is_read_from_each_form_encoding() {
        assert_eq!(
            form_field("application/x-www-form-urlencoded", b"a=1&password=p%26w+d", "password").as_deref(),
            Some("p&w d")
        );
        let multipart = b"--XyZ\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nno\r\n--XyZ\r\nContent-Disposition: form-data; name=\"password\"\r\n\r\nsecret pass\r\n--XyZ--\r\n";
        assert_eq!(
            form_field("multipart/form-data; boundary=XyZ", multipart, "password").as_deref(),
            Some("secret pass")
        );
        assert_eq!(form_field("application/json", b"{\"password\":\"p\"}", "password"), None);
        assert_eq!(form_field("multipart/form-data", multipart, "password"), None, "no boundary");
    }
}
