//! Transports: thin adapters that accept or upgrade a connection, pick the protocol, create a
//! [`crate::session::Session`] and pump frames both ways. No protocol logic lives here: the
//! codec ([`crate::protocol`]) owns every byte of framing, the session every rule.
//!
//! - `websocket.rs`, `uni_websocket.rs`: `/connection/websocket` and `uni_websocket`;
//! - `http_stream.rs`: the emulated bidirectional `http_stream` and `sse`, and `/emulation`;
//! - `uni_http.rs`: `uni_http_stream` and `uni_sse`;
//! - `grpc.rs`: `uni_grpc` and the bidirectional gRPC stream;
//! - `webtransport.rs`: WebTransport over HTTP/3;
//! - `http_entry.rs`: the checks every HTTP endpoint shares (method, shutdown, origin, CORS);
//! - `outgoing.rs`: the outbound half of the stream-shaped transports;
//! - `tcp.rs`: a TCP connection shared between hyper and the WebSocket writer.

pub mod grpc;
pub mod http_entry;
pub mod http_stream;
pub mod outgoing;
pub mod tcp;
pub mod uni_http;
pub mod uni_websocket;
pub mod websocket;
pub mod webtransport;

use crate::common::glob_match;

/// Centrifugo's origin rule: with no patterns configured only requests without an `Origin`
/// header pass; otherwise the origin must match one pattern (case-insensitive, `*` = any).
pub fn origin_allowed(origin: Option<&str>, allowed: &[String]) -> bool {
    let Some(origin) = origin else { return true };
    let origin = origin.to_ascii_lowercase();
    allowed.iter().any(|pattern| glob_match(&pattern.to_ascii_lowercase(), &origin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert!(origin_allowed(None, &[]));
        assert!(!origin_allowed(Some("https://a.com"), &[]));
        assert!(origin_allowed(Some("https://A.com"), &["https://a.com".into()]));
        assert!(origin_allowed(Some("http://x"), &["*".into()]));
    }
}
