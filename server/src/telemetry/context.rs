//! W3C trace context: the `traceparent` a request carries in and out.

use std::fmt::Write;

/// The W3C header names (also the gRPC metadata keys).
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// The sampled bit of the trace flags.
const SAMPLED: u8 = 0x01;

/// A span's identity as it travels between processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
    /// It came from another process (a `traceparent`), not from a span of this node.
    pub remote: bool,
    /// The vendor `tracestate`, passed along unchanged.
    pub trace_state: String,
}

fn hex_bytes<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let mut bytes = [0u8; N];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(bytes)
}

fn hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

impl SpanContext {
    /// Reads a `traceparent` (and its `tracestate`); `None` when it is not a valid one, which
    /// the W3C rules say to treat as no parent at all.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        let mut parts = traceparent.trim().split('-');
        let version = parts.next()?;
        let (trace_id, span_id, flags) = (parts.next()?, parts.next()?, parts.next()?);
        // Version 00 has exactly four parts; a later version may add more, never "ff".
        let more = parts.next().is_some();
        if version.len() != 2
            || version == "ff"
            || hex_bytes::<1>(version).is_none()
            || (version == "00" && more)
        {
            return None;
        }
        let trace_id = hex_bytes::<16>(trace_id).filter(|id| id.iter().any(|b| *b != 0))?;
        let span_id = hex_bytes::<8>(span_id).filter(|id| id.iter().any(|b| *b != 0))?;
        let [flags] = hex_bytes::<1>(flags)?;
        let trace_state = tracestate.map(|state| state.trim().to_owned()).unwrap_or_default();
        Some(Self { trace_id, span_id, flags, remote: true, trace_state })
    }

    /// The parent in a request's headers (or gRPC metadata), if one is valid.
    pub fn from_headers(headers: &http::HeaderMap) -> Option<Self> {
        let parent = headers.get(TRACEPARENT)?.to_str().ok()?;
        let state = headers.get(TRACESTATE).and_then(|value| value.to_str().ok());
        Self::parse(parent, state)
    }

    /// This context as a `traceparent` header value.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{:02x}", hex(&self.trace_id), hex(&self.span_id), self.flags)
    }

    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// A new span's context: `parent`'s trace (or a new one), a new span id, and the sampled
    /// bit `sample` decides given the trace id.
    pub fn child_of(parent: Option<&SpanContext>, sample: impl FnOnce(&[u8; 16]) -> bool) -> Self {
        let trace_id = match parent {
            Some(parent) => parent.trace_id,
            None => nonzero_random(),
        };
        let sampled = sample(&trace_id);
        let inherited = parent.map_or(0, |parent| parent.flags & !SAMPLED);
        Self {
            trace_id,
            span_id: nonzero_random(),
            flags: inherited | if sampled { SAMPLED } else { 0 },
            remote: false,
            trace_state: parent.map(|parent| parent.trace_state.clone()).unwrap_or_default(),
        }
    }
}

fn nonzero_random<const N: usize>() -> [u8; N] {
    loop {
        let bytes: [u8; N] = rand::random();
        if bytes.iter().any(|b| *b != 0) {
            return bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_round_trips() {
        let context = SpanContext::parse(EXAMPLE, Some(" vendor=x ")).unwrap();
        assert_eq!(hex(&context.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(context.sampled() && context.remote);
        assert_eq!(context.trace_state, "vendor=x");
        assert_eq!(context.traceparent(), EXAMPLE);
    }

    #[test]
    fn invalid_traceparents_are_no_parent() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(SpanContext::parse(bad, None), None, "{bad:?}");
        }
        // A later version may carry more fields; the known ones still count.
        assert!(
            SpanContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", None).is_some()
        );
    }

    #[test]
    fn a_child_keeps_the_trace_and_gets_its_own_span() {
        let parent = SpanContext::parse(EXAMPLE, Some("v=1")).unwrap();
        let child = SpanContext::child_of(Some(&parent), |_| true);
        assert_eq!(child.trace_id, parent.trace_id);
        assert_ne!(child.span_id, parent.span_id);
        assert_eq!(child.trace_state, "v=1");
        assert!(!child.remote && child.sampled());
        let root = SpanContext::child_of(None, |_| false);
        assert_ne!(root.trace_id, parent.trace_id);
        assert!(!root.sampled());
    }
}
