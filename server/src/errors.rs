//! Protocol-level outcomes as values: client errors (`Reply.error`) and disconnects.
//!
//! Both are part of the wire contract with the SDKs, so the codes and messages here are exactly
//! Centrifugo's. Client error codes 0–399 are reserved for the server library (applications may
//! use 400–1999). Disconnect codes decide what an SDK does next:
//! * 3000–3499, 4000–4499 and ≥ 5000: the client reconnects;
//! * 3500–3999 and 4500–4999: terminal, the client stays disconnected.
//!
//! A disconnect reason travels in a WebSocket close frame, so it must fit in 123 bytes.

use std::borrow::Cow;
use std::fmt;

/// An error returned to the client inside a reply; the connection stays open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    pub code: u32,
    /// Centrifugo's text for the codes it defines; an application backend's own for others.
    pub message: Cow<'static, str>,
    /// The client may retry the same request later.
    pub temporary: bool,
}

impl ClientError {
    const fn new(code: u32, message: &'static str) -> Self {
        Self { code, message: Cow::Borrowed(message), temporary: false }
    }
    const fn temporary(code: u32, message: &'static str) -> Self {
        Self { code, message: Cow::Borrowed(message), temporary: true }
    }

    /// An error an application backend chose (a proxy's `error` object).
    pub fn custom(code: u32, message: String, temporary: bool) -> Self {
        Self { code, message: Cow::Owned(message), temporary }
    }

    pub const INTERNAL: Self = Self::temporary(100, "internal server error");
    pub const UNAUTHORIZED: Self = Self::new(101, "unauthorized");
    pub const UNKNOWN_CHANNEL: Self = Self::new(102, "unknown channel");
    pub const PERMISSION_DENIED: Self = Self::new(103, "permission denied");
    pub const METHOD_NOT_FOUND: Self = Self::new(104, "method not found");
    pub const ALREADY_SUBSCRIBED: Self = Self::new(105, "already subscribed");
    pub const LIMIT_EXCEEDED: Self = Self::new(106, "limit exceeded");
    pub const BAD_REQUEST: Self = Self::new(107, "bad request");
    pub const NOT_AVAILABLE: Self = Self::new(108, "not available");
    pub const TOKEN_EXPIRED: Self = Self::new(109, "token expired");
    pub const EXPIRED: Self = Self::new(110, "expired");
    pub const TOO_MANY_REQUESTS: Self = Self::temporary(111, "too many requests");
    pub const UNRECOVERABLE_POSITION: Self = Self::new(112, "unrecoverable position");
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for ClientError {}

/// Why a connection is being closed, sent to the client as a close code and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub code: u32,
    pub reason: String,
}

macro_rules! disconnects {
    ($($name:ident = $code:literal, $reason:literal;)*) => {
        impl Disconnect {
            $(
                #[doc = concat!("Code ", stringify!($code), ": \"", $reason, "\".")]
                pub fn $name() -> Self {
                    Self { code: $code, reason: String::from($reason) }
                }
            )*
        }
    };
}

disconnects! {
    connection_closed = 3000, "connection closed";
    shutdown = 3001, "shutdown";
    server_error = 3004, "internal server error";
    expired = 3005, "connection expired";
    subscription_expired = 3006, "subscription expired";
    slow = 3008, "slow";
    write_error = 3009, "write error";
    insufficient_state = 3010, "insufficient state";
    force_reconnect = 3011, "force reconnect";
    no_pong = 3012, "no pong";
    too_many_requests = 3013, "too many requests";
    invalid_token = 3500, "invalid token";
    bad_request = 3501, "bad request";
    stale = 3502, "stale";
    force_no_reconnect = 3503, "force disconnect";
    connection_limit = 3504, "connection limit";
    channel_limit = 3505, "channel limit";
    inappropriate_protocol = 3506, "inappropriate protocol";
    permission_denied = 3507, "permission denied";
    not_available = 3508, "not available";
    too_many_errors = 3509, "too many errors";
}

impl Disconnect {
    /// A custom disconnect (server API); the reason is cut to fit a close frame.
    pub fn custom(code: u32, reason: &str) -> Self {
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        Self { code, reason: reason[..end].to_owned() }
    }

    /// Whether an SDK reconnects after this disconnect.
    pub fn reconnects(&self) -> bool {
        !matches!(self.code, 3500..=3999 | 4500..=4999)
    }
}

impl fmt::Display for Disconnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.reason, self.code)
    }
}

/// Codes of the `Unsubscribe` push.
pub mod unsubscribe {
    /// Server-initiated unsubscribe (API call); terminal for the subscription.
    pub const SERVER: (u32, &str) = (2000, "server unsubscribe");
    /// A gap in the stream was detected; the SDK resubscribes and recovers.
    pub const INSUFFICIENT_STATE: (u32, &str) = (2500, "insufficient state");
    /// The subscription token expired without a refresh; the SDK resubscribes.
    pub const EXPIRED: (u32, &str) = (2501, "subscription expired");
}
