//! [`Prepared`]: one push on its way to many subscribers, encoded at most once per protocol.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use bytes::Bytes;

use crate::proto::client::{ClientInfo, Join, Leave, Publication, Push, Reply};
use crate::protocol::{self, EncodeError, ProtocolType};

#[derive(Debug)]
enum PreparedKind {
    Publication { offset: u64, epoch: String },
    JoinLeave,
}

/// A push to many subscribers, encoded lazily and at most once per protocol.
#[derive(Debug)]
pub struct Prepared {
    reply: Reply,
    kind: PreparedKind,
    encoded: [OnceLock<Result<Bytes, EncodeError>>; ProtocolType::COUNT],
}

impl Prepared {
    /// A publication push; `epoch` is attached to the wire message only for offset 1, as
    /// Centrifugo does (clients learn epochs from subscribe and history results).
    pub fn publication(channel: &str, mut publication: Publication, epoch: &str) -> Self {
        publication.time = 0;
        if publication.offset == 1 {
            publication.epoch = epoch.to_owned();
        }
        // Offset 0 (no history) reads as "no position" in `position()`.
        let kind = PreparedKind::Publication { offset: publication.offset, epoch: epoch.to_owned() };
        Self::new(Push { channel: channel.to_owned(), r#pub: Some(publication), ..Default::default() }, kind)
    }

    pub fn join(channel: &str, info: ClientInfo) -> Self {
        Self::new(
            Push { channel: channel.to_owned(), join: Some(Join { info: Some(info) }), ..Default::default() },
            PreparedKind::JoinLeave,
        )
    }

    pub fn leave(channel: &str, info: ClientInfo) -> Self {
        Self::new(
            Push {
                channel: channel.to_owned(),
                leave: Some(Leave { info: Some(info) }),
                ..Default::default()
            },
            PreparedKind::JoinLeave,
        )
    }

    fn new(push: Push, kind: PreparedKind) -> Self {
        Self { reply: Reply { push: Some(push), ..Default::default() }, kind, encoded: Default::default() }
    }

    /// Stream position of a publication with history, else `None`.
    pub fn position(&self) -> Option<(u64, &str)> {
        match &self.kind {
            PreparedKind::Publication { offset, epoch } if *offset > 0 => Some((*offset, epoch)),
            _ => None,
        }
    }

    /// Tags of a publication push (for per-subscriber tags filters).
    pub fn publication_tags(&self) -> Option<&BTreeMap<String, String>> {
        self.reply.push.as_ref()?.r#pub.as_ref().map(|p| &p.tags)
    }

    pub fn is_join_leave(&self) -> bool {
        matches!(self.kind, PreparedKind::JoinLeave)
    }

    /// The encoded reply for `protocol`, computed on first use.
    pub fn encoded(&self, protocol: ProtocolType) -> Result<Bytes, EncodeError> {
        self.encoded[protocol.index()].get_or_init(|| protocol::encode_reply(protocol, &self.reply)).clone()
    }
}
