//! The client protocol codec: frames ⇄ messages. Does no IO and knows nothing of tokio.
//!
//! Two framings carry the same messages:
//! * **JSON**: one or more messages per transport frame, separated by `\n`; keys and shapes are
//!   Centrifugo's (see [`crate::proto::json`]).
//! * **Protobuf**: every message is prefixed by its length as an unsigned varint.
//!
//! Decoding checks sizes before allocating: a frame is already bounded by the transport's
//! message limit, and a Protobuf length prefix larger than the rest of the frame is rejected
//! without reading further.
//!
//! Encoding produces one message at a time ([`EncodedMessage`]), which the hub shares between
//! subscribers and the outbound queue holds as it is. Laying queued messages out on a transport
//! is [`framing`] (and the WebSocket frame, [`websocket`]); cutting an inbound byte stream into
//! frames is [`stream_framing`].

use bytes::{Bytes, BytesMut};
use prost::Message;

use crate::metrics::FrameType;
use crate::proto::client::{Command, ConnectRequest, EmulationRequest, Push, Reply};

/// Which framing a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolType {
    Json,
    Protobuf,
}

impl ProtocolType {
    /// Number of variants, for arrays indexed by [`ProtocolType::index`].
    pub const COUNT: usize = 2;

    pub fn index(self) -> usize {
        match self {
            Self::Json => 0,
            Self::Protobuf => 1,
        }
    }
}

/// Why an incoming frame was rejected. Any of these closes the connection with 3501.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("empty frame")]
    Empty,
    #[error("malformed JSON command: {0}")]
    Json(String),
    #[error("malformed protobuf command: {0}")]
    Protobuf(String),
    #[error("length prefix {declared} exceeds the {available} bytes left in the frame")]
    Truncated { declared: u64, available: usize },
}

/// Decodes every command in one incoming frame, appending them to `out`.
pub fn decode_commands(
    protocol: ProtocolType,
    frame: &[u8],
    out: &mut Vec<Command>,
) -> Result<(), DecodeError> {
    let before = out.len();
    match protocol {
        ProtocolType::Json => {
            for line in frame.split(|b| *b == b'\n') {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let command =
                    serde_json::from_slice::<Command>(line).map_err(|e| DecodeError::Json(e.to_string()))?;
                out.push(command);
            }
        }
        ProtocolType::Protobuf => {
            let mut rest = frame;
            while !rest.is_empty() {
                let (message, tail) = split_delimited(rest)?;
                let command = Command::decode(message).map_err(|e| DecodeError::Protobuf(e.to_string()))?;
                out.push(command);
                rest = tail;
            }
        }
    }
    if out.len() == before {
        return Err(DecodeError::Empty);
    }
    Ok(())
}

/// Splits one varint-length-prefixed message off the front of `buf`.
pub fn split_delimited(buf: &[u8]) -> Result<(&[u8], &[u8]), DecodeError> {
    let mut cursor = buf;
    let declared =
        prost::encoding::decode_varint(&mut cursor).map_err(|e| DecodeError::Protobuf(e.to_string()))?;
    let available = cursor.len();
    if declared > available as u64 {
        return Err(DecodeError::Truncated { declared, available });
    }
    Ok(cursor.split_at(declared as usize))
}

/// Why an outgoing message could not be encoded for a connection.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum EncodeError {
    /// A binary payload cannot be embedded in the JSON protocol (Centrifugo: 3506).
    #[error("payload is not valid JSON")]
    NotJson,
}

/// One encoded message without framing separators; cheap to clone and share.
pub type EncodedMessage = Bytes;

fn encode_json<T: serde::Serialize>(message: &T) -> Result<EncodedMessage, EncodeError> {
    serde_json::to_vec(message).map(Bytes::from).map_err(|_| EncodeError::NotJson)
}

fn encode_protobuf<T: Message>(message: &T) -> EncodedMessage {
    let mut buf = BytesMut::with_capacity(message.encoded_len() + 5);
    message.encode_length_delimited(&mut buf).expect("BytesMut grows as needed");
    buf.freeze()
}

/// Encodes a reply (a command result, an async push wrapped in a reply, or a ping).
pub fn encode_reply(protocol: ProtocolType, reply: &Reply) -> Result<EncodedMessage, EncodeError> {
    match protocol {
        ProtocolType::Json => encode_json(reply),
        ProtocolType::Protobuf => Ok(encode_protobuf(reply)),
    }
}

/// Encodes a bare push (unidirectional transports send pushes without the reply wrapper).
pub fn encode_push(protocol: ProtocolType, push: &Push) -> Result<EncodedMessage, EncodeError> {
    match protocol {
        ProtocolType::Json => encode_json(push),
        ProtocolType::Protobuf => Ok(encode_protobuf(push)),
    }
}

/// The message inside a queued Protobuf message, without its varint length prefix (for
/// transports that frame messages themselves, like gRPC). A zero-copy slice.
pub fn undelimit(message: &Bytes) -> Bytes {
    match split_delimited(message) {
        Ok((inner, rest)) => {
            debug_assert!(rest.is_empty(), "a queued message holds exactly one length-prefixed message");
            message.slice_ref(inner)
        }
        // Queued messages are produced by `encode_*`; keep the bytes rather than panic.
        Err(_) => message.clone(),
    }
}

/// `Reply.push` is field 4, length-delimited: tag byte `(4 << 3) | 2`.
const REPLY_PUSH_TAG: u8 = 0x22;

/// Turns a queued reply (as encoded by [`encode_reply`]; Protobuf ones length-prefixed) into
/// the bare push a unidirectional transport sends: the reply's `push`, or an empty push for a
/// ping (an empty reply). `None` for a reply that is not a push. Zero-copy: the push bytes are
/// a slice of the reply, so a publication encoded once for the hub stays shared.
pub fn reply_into_push(protocol: ProtocolType, message: &Bytes) -> Option<Bytes> {
    match protocol {
        ProtocolType::Json => {
            if message.as_ref() == b"{}" {
                return Some(message.clone());
            }
            // The encoder writes a push-only reply as exactly `{"push":…}`.
            const PREFIX: &[u8] = b"{\"push\":";
            (message.starts_with(PREFIX) && message.ends_with(b"}"))
                .then(|| message.slice(PREFIX.len()..message.len() - 1))
        }
        ProtocolType::Protobuf => {
            let reply = undelimit(message);
            if reply.is_empty() {
                return Some(reply);
            }
            if reply[0] != REPLY_PUSH_TAG {
                return None;
            }
            let (push, rest) = split_delimited(&reply[1..]).ok()?;
            rest.is_empty().then(|| reply.slice_ref(push))
        }
    }
}

/// A JSON `ConnectRequest` (unidirectional transports take it from a body, a query parameter
/// or a first message); blank text is an empty request. `None` when it is not one.
pub fn decode_connect_request(json: &[u8]) -> Option<ConnectRequest> {
    if json.iter().all(u8::is_ascii_whitespace) {
        return Some(ConnectRequest::default());
    }
    serde_json::from_slice(json).ok()
}

/// One request of the bidirectional emulation: the node and session it is for, and the
/// command frame it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmulationFrame {
    pub node: String,
    pub session: String,
    pub frame: Bytes,
}

/// Decodes an emulation request body. JSON: `data` is a JSON string holding the
/// newline-joined commands; Protobuf: an `EmulationRequest` whose `data` holds
/// varint-delimited commands. `None` when malformed or without a session.
pub fn decode_emulation_request(protocol: ProtocolType, body: &[u8]) -> Option<EmulationFrame> {
    let (request, frame) = match protocol {
        ProtocolType::Protobuf => {
            let request = EmulationRequest::decode(body).ok()?;
            let frame = request.data.clone();
            (request, frame)
        }
        ProtocolType::Json => {
            let request = serde_json::from_slice::<EmulationRequest>(body).ok()?;
            // The raw-JSON `data` field holds a JSON string literal; its text is the frame.
            let frame = Bytes::from(serde_json::from_slice::<String>(&request.data).ok()?);
            (request, frame)
        }
    };
    (!request.session.is_empty()).then_some(EmulationFrame {
        node: request.node,
        session: request.session,
        frame,
    })
}

pub mod deflate;
pub mod delta;
pub mod fossil;
pub mod framing;
pub mod stream_framing;
pub mod websocket;

#[cfg(test)]
mod tests;

/// What a command is, as the metrics' `frame_type` and `method` labels name it. A command with
/// id 0 and nothing else is a pong.
pub fn command_frame_type(command: &Command) -> FrameType {
    let kinds = [
        (command.connect.is_some(), FrameType::Connect),
        (command.subscribe.is_some(), FrameType::Subscribe),
        (command.unsubscribe.is_some(), FrameType::Unsubscribe),
        (command.publish.is_some(), FrameType::Publish),
        (command.presence.is_some(), FrameType::Presence),
        (command.presence_stats.is_some(), FrameType::PresenceStats),
        (command.history.is_some(), FrameType::History),
        (command.ping.is_some(), FrameType::Ping),
        (command.send.is_some(), FrameType::Send),
        (command.rpc.is_some(), FrameType::Rpc),
        (command.refresh.is_some(), FrameType::Refresh),
        (command.sub_refresh.is_some(), FrameType::SubRefresh),
    ];
    match kinds.iter().find(|(present, _)| *present) {
        Some((_, kind)) => *kind,
        None if command.id == 0 => FrameType::ClientPong,
        None => FrameType::Unknown,
    }
}

/// What a reply carries, as the metrics name it; `None` for an error or empty reply (its
/// command's kind is the name then).
pub fn reply_frame_type(reply: &Reply) -> Option<FrameType> {
    if let Some(push) = &reply.push {
        return Some(push_frame_type(push));
    }
    let kinds = [
        (reply.connect.is_some(), FrameType::Connect),
        (reply.subscribe.is_some(), FrameType::Subscribe),
        (reply.unsubscribe.is_some(), FrameType::Unsubscribe),
        (reply.publish.is_some(), FrameType::Publish),
        (reply.presence.is_some(), FrameType::Presence),
        (reply.presence_stats.is_some(), FrameType::PresenceStats),
        (reply.history.is_some(), FrameType::History),
        (reply.ping.is_some(), FrameType::Ping),
        (reply.rpc.is_some(), FrameType::Rpc),
        (reply.refresh.is_some(), FrameType::Refresh),
        (reply.sub_refresh.is_some(), FrameType::SubRefresh),
    ];
    kinds.iter().find(|(present, _)| *present).map(|(_, kind)| *kind)
}

/// What a push is, as the metrics name it.
pub fn push_frame_type(push: &Push) -> FrameType {
    let kinds = [
        (push.r#pub.is_some(), FrameType::PushPublication),
        (push.join.is_some(), FrameType::PushJoin),
        (push.leave.is_some(), FrameType::PushLeave),
        (push.unsubscribe.is_some(), FrameType::PushUnsubscribe),
        (push.message.is_some(), FrameType::PushMessage),
        (push.subscribe.is_some(), FrameType::PushSubscribe),
        (push.connect.is_some(), FrameType::PushConnect),
        (push.disconnect.is_some(), FrameType::PushDisconnect),
        (push.refresh.is_some(), FrameType::PushRefresh),
    ];
    kinds.iter().find(|(present, _)| *present).map_or(FrameType::Unknown, |(_, kind)| *kind)
}
