//! How encoded messages are laid out on a transport: several messages in one transport message,
//! or one after another in a byte stream. Every transport that puts several messages into one
//! buffer does it through [`Framing`] (WebSocket frames, HTTP response bodies, the WebTransport
//! stream, joined uni WebSocket pushes); the WebSocket frame itself is in [`super::websocket`].
//! gRPC carries one message per gRPC message instead ([`super::undelimit`]).

use bytes::{BufMut, Bytes, BytesMut};

use super::ProtocolType;

/// One way of joining encoded messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// JSON messages separated by `\n` inside one transport message (a WebSocket frame, or
    /// the pushes a unidirectional WebSocket joins).
    JsonBatch,
    /// JSON messages, each followed by `\n`, on a byte stream.
    JsonLines,
    /// Protobuf messages as queued: each carries its varint length prefix.
    Delimited,
    /// Each message as one Server-Sent Events event (`data: …\n\n`).
    EventStream,
}

impl Framing {
    /// Several messages in one transport message.
    pub fn batch(protocol: ProtocolType) -> Self {
        match protocol {
            ProtocolType::Json => Self::JsonBatch,
            ProtocolType::Protobuf => Self::Delimited,
        }
    }

    /// Messages on a byte stream (an HTTP response body, a WebTransport stream).
    pub fn stream(protocol: ProtocolType) -> Self {
        match protocol {
            ProtocolType::Json => Self::JsonLines,
            ProtocolType::Protobuf => Self::Delimited,
        }
    }

    /// The `Content-Type` of an HTTP response body framed this way.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::JsonBatch | Self::JsonLines => "application/json",
            Self::Delimited => "application/octet-stream",
            Self::EventStream => "text/event-stream; charset=utf-8",
        }
    }

    /// Length of `messages` framed this way.
    pub fn framed_len(self, messages: &[Bytes]) -> usize {
        let payload: usize = messages.iter().map(Bytes::len).sum();
        let count = messages.len();
        payload
            + match self {
                Self::JsonBatch => count.saturating_sub(1),
                Self::JsonLines => count,
                Self::Delimited => 0,
                Self::EventStream => count * (DATA_PREFIX.len() + EVENT_END.len()),
            }
    }

    /// Appends `messages` framed this way to `out`.
    pub fn write(self, messages: &[Bytes], out: &mut impl BufMut) {
        for (i, message) in messages.iter().enumerate() {
            match self {
                Self::JsonBatch => {
                    if i > 0 {
                        out.put_u8(b'\n');
                    }
                    out.put_slice(message);
                }
                Self::JsonLines => {
                    out.put_slice(message);
                    out.put_u8(b'\n');
                }
                Self::Delimited => out.put_slice(message),
                Self::EventStream => {
                    out.put_slice(DATA_PREFIX);
                    out.put_slice(message);
                    out.put_slice(EVENT_END);
                }
            }
        }
    }

    /// `messages` framed this way, as one buffer.
    pub fn encode(self, messages: &[Bytes]) -> Bytes {
        if let ([message], Self::JsonBatch | Self::Delimited) = (messages, self) {
            // Nothing to add: share the queued bytes.
            return message.clone();
        }
        let mut out = BytesMut::with_capacity(self.framed_len(messages));
        self.write(messages, &mut out);
        out.freeze()
    }
}

const DATA_PREFIX: &[u8] = b"data: ";
const EVENT_END: &[u8] = b"\n\n";

/// What an SSE response sends before its first event (some proxies hold back a response until
/// its first bytes).
pub const EVENT_STREAM_PREAMBLE: &[u8] = b"\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_framing_lays_messages_out_as_its_transport_expects() {
        let messages = [Bytes::from_static(b"{\"a\":1}"), Bytes::from_static(b"{}")];
        let cases: [(Framing, &[u8]); 3] = [
            (Framing::JsonBatch, b"{\"a\":1}\n{}"),
            (Framing::JsonLines, b"{\"a\":1}\n{}\n"),
            (Framing::EventStream, b"data: {\"a\":1}\n\ndata: {}\n\n"),
        ];
        for (framing, expected) in cases {
            assert_eq!(&framing.encode(&messages)[..], expected, "{framing:?}");
            assert_eq!(framing.framed_len(&messages), expected.len(), "{framing:?}");
        }
        let delimited = [Bytes::from_static(&[1, 8]), Bytes::from_static(&[0])];
        assert_eq!(&Framing::Delimited.encode(&delimited)[..], &[1, 8, 0]);
        assert_eq!(Framing::batch(ProtocolType::Protobuf), Framing::Delimited);
        assert_eq!(Framing::stream(ProtocolType::Json), Framing::JsonLines);
    }
}
