//! Transports: thin adapters that accept or upgrade a connection, pick the protocol, create a
//! [`crate::session::Session`] and pump frames both ways. No protocol logic lives here.

pub mod grpc;
pub mod http_stream;
pub mod outgoing;
pub mod tcp;
pub mod websocket;
pub mod webtransport;

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

    #[test]
    fn origins() {
        assert!(origin_allowed(None, &[]));
        assert!(!origin_allowed(Some("https://a.com"), &[]));
        assert!(origin_allowed(Some("https://A.com"), &["https://a.com".into()]));
        assert!(origin_allowed(Some("http://x"), &["*".into()]));
    }
}
