//! The outbound side shared by the stream-shaped transports (gRPC, HTTP-streaming, SSE and
//! the unidirectional ones): drains a session's outbound queue in batches, turns each queued
//! reply into what the transport sends (the reply itself, or the bare push inside it) and
//! ends with a `disconnect` message, since these transports have no close frame to carry the
//! code. Framing (gRPC frames, or [`crate::protocol::framing`] for the byte streams) is applied
//! by the transport.
//!
//! Dropping an [`Outgoing`] (the client went away, the response body was dropped) closes the
//! session.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use crate::errors::Disconnect;
use crate::hub::SessionHandle;
use crate::hub::outbound::Batch;
use crate::proto::client::{Disconnect as DisconnectPush, Push, Reply};
use crate::protocol::{self, ProtocolType};

/// Bytes taken from the outbound queue at a time.
const MAX_BATCH: usize = 64 * 1024;

/// Whether queued replies go out as replies or as the bare pushes inside them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Bidirectional transports: messages exactly as queued (Protobuf ones keep their varint
    /// length prefix).
    Replies,
    /// Unidirectional transports: bare pushes (Protobuf ones without a length prefix); pings
    /// become empty pushes.
    Pushes,
}

/// A session's outbound messages, batch by batch; see the module docs.
pub struct Outgoing {
    handle: Arc<SessionHandle>,
    protocol: ProtocolType,
    shape: Shape,
    /// Set once the close was seen: the batch after it is the last.
    ended: bool,
    /// Whether to send the final `disconnect` message.
    disconnect_message: bool,
}

impl Outgoing {
    pub fn new(handle: Arc<SessionHandle>, protocol: ProtocolType, shape: Shape) -> Self {
        Self { handle, protocol, shape, ended: false, disconnect_message: true }
    }

    /// Leaves out the final `disconnect` message (`uni_websocket.disable_disconnect_push`).
    pub fn without_disconnect_message(mut self) -> Self {
        self.disconnect_message = false;
        self
    }

    /// The session, for transports that also need to act on it.
    pub fn handle(&self) -> &Arc<SessionHandle> {
        &self.handle
    }

    /// The next non-empty batch of messages, or `None` once the session has ended and
    /// everything (including the disconnect message) was returned.
    pub async fn next_batch(&mut self) -> Option<Vec<Bytes>> {
        while !self.ended {
            match self.handle.outbound.next_batch(MAX_BATCH).await {
                Batch::Messages(messages) => {
                    let out: Vec<Bytes> = messages.iter().filter_map(|m| self.convert(m)).collect();
                    if !out.is_empty() {
                        return Some(out);
                    }
                }
                // Only the WebSocket writer queues ready-made frames.
                Batch::Raw(_) => {}
                Batch::Close(disconnect) => {
                    self.ended = true;
                    // A client that went away cannot read it.
                    if self.disconnect_message && disconnect.code != Disconnect::connection_closed().code {
                        return Some(vec![self.disconnect(&disconnect)]);
                    }
                }
            }
        }
        None
    }

    /// The disconnect a session ended with, once it has.
    pub fn closed_with(&self) -> Option<Disconnect> {
        self.handle.outbound.closed_with()
    }

    fn convert(&self, queued: &Bytes) -> Option<Bytes> {
        match self.shape {
            Shape::Replies => Some(queued.clone()),
            Shape::Pushes => protocol::reply_into_push(self.protocol, queued),
        }
    }

    fn disconnect(&self, disconnect: &Disconnect) -> Bytes {
        let push = Push {
            disconnect: Some(DisconnectPush {
                code: disconnect.code,
                reason: disconnect.reason.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let reply = Reply { push: Some(push), ..Default::default() };
        // Encoded like any queued reply, then shaped the same way.
        let queued = protocol::encode_reply(self.protocol, &reply).expect("a disconnect push is valid JSON");
        self.convert(&queued).expect("a push-only reply converts to its push")
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        self.handle.disconnect(Disconnect::connection_closed());
    }
}

/// Messages not yet handed out, for transports that send one message at a time.
pub struct OneByOne {
    outgoing: Outgoing,
    ready: VecDeque<Bytes>,
}

impl OneByOne {
    pub fn new(outgoing: Outgoing) -> Self {
        Self { outgoing, ready: VecDeque::new() }
    }

    pub async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(message) = self.ready.pop_front() {
                return Some(message);
            }
            self.ready.extend(self.outgoing.next_batch().await?);
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[tokio::test]
    async fn ends_with_a_disconnect_message_in_the_transport_shape() {
        for (protocol, shape) in [
            (ProtocolType::Json, Shape::Replies),
            (ProtocolType::Json, Shape::Pushes),
            (ProtocolType::Protobuf, Shape::Replies),
            (ProtocolType::Protobuf, Shape::Pushes),
        ] {
            let handle = SessionHandle::new(protocol, 1 << 20, crate::metrics::TransportTraffic::detached());
            let mut outgoing = Outgoing::new(handle.clone(), protocol, shape);
            handle.disconnect(Disconnect::shutdown());
            let last = outgoing.next_batch().await.unwrap().pop().unwrap();
            let code = match (protocol, shape) {
                (ProtocolType::Json, Shape::Replies) => serde_json::from_slice::<serde_json::Value>(&last)
                    .unwrap()["push"]["disconnect"]["code"]
                    .as_u64()
                    .unwrap() as u32,
                (ProtocolType::Json, Shape::Pushes) => serde_json::from_slice::<serde_json::Value>(&last)
                    .unwrap()["disconnect"]["code"]
                    .as_u64()
                    .unwrap() as u32,
                (ProtocolType::Protobuf, Shape::Replies) => {
                    Reply::decode_length_delimited(last).unwrap().push.unwrap().disconnect.unwrap().code
                }
                (ProtocolType::Protobuf, Shape::Pushes) => {
                    Push::decode(last).unwrap().disconnect.unwrap().code
                }
            };
            assert_eq!(code, 3001, "{protocol:?} {shape:?}");
            assert!(outgoing.next_batch().await.is_none());
        }
    }

    #[tokio::test]
    async fn a_client_that_left_gets_no_disconnect_message_and_dropping_closes_the_session() {
        let handle =
            SessionHandle::new(ProtocolType::Json, 1 << 20, crate::metrics::TransportTraffic::detached());
        let mut outgoing = Outgoing::new(handle.clone(), ProtocolType::Json, Shape::Replies);
        handle.disconnect(Disconnect::connection_closed());
        assert!(outgoing.next_batch().await.is_none());

        let handle =
            SessionHandle::new(ProtocolType::Json, 1 << 20, crate::metrics::TransportTraffic::detached());
        drop(Outgoing::new(handle.clone(), ProtocolType::Json, Shape::Replies));
        assert!(handle.is_closed());
    }
}
