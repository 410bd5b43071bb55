//! Values and helpers every layer shares: positions in a channel's history stream, history
//! queries and their results, the wall clock, glob patterns, and the server API's way of
//! carrying binary payloads.
//!
//! **Boundary:** this module imports nothing from the crate but the generated protocol types,
//! so the session, the hub and the engines can all name these values without importing each
//! other.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;

use crate::proto::client::Publication;

/// A position in a channel's history stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamPosition {
    pub offset: u64,
    pub epoch: String,
}

/// Which part of a history stream to read.
#[derive(Debug, Clone, Default)]
pub struct HistoryFilter {
    /// Only publications after (or, with `reverse`, before) this position; the epoch must match.
    pub since: Option<StreamPosition>,
    /// 0 = none (position only), negative = all, N = at most N.
    pub limit: i32,
    pub reverse: bool,
    /// Refreshes the stream meta TTL on read.
    pub meta_ttl: Duration,
}

/// A history read: publications plus the stream's current top position.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistoryResult {
    pub publications: Vec<Publication>,
    pub position: StreamPosition,
}

/// The value of `name` in `application/x-www-form-urlencoded` text (a query string or a form
/// body): percent-decoded, `+` as a space.
pub fn form_value(encoded: &str, name: &str) -> Option<String> {
    encoded.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| {
            let value = value.replace('+', " ");
            percent_encoding::percent_decode_str(&value).decode_utf8_lossy().into_owned()
        })
    })
}

/// Current unix time in seconds.
pub fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Current unix time in milliseconds.
pub fn unix_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Matches `text` against a glob `pattern` where `*` matches any run of characters and `?`
/// one character (used for `client.allowed_origins` and the `channels` API pattern).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    // Iterative matcher with single-star backtracking: linear in practice, no recursion.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

/// A server API payload: `raw` as sent (JSON), unless its base64 twin field (`b64data`,
/// `b64info`) is set, which then wins. `None` when the base64 is malformed.
pub fn b64_or_raw(b64: &str, raw: Bytes) -> Option<Bytes> {
    if b64.is_empty() {
        return Some(raw);
    }
    base64::engine::general_purpose::STANDARD.decode(b64).ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("chat:*", "chat:room"));
        assert!(!glob_match("chat:*", "news:room"));
        assert!(glob_match("https://*.example.com", "https://app.example.com"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "abbc"));
        assert!(glob_match("", ""));
        assert!(!glob_match("", "x"));
    }
}
