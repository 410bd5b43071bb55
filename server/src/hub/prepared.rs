//! [`Prepared`]: one push on its way to many subscribers, encoded at most once per protocol
//! and per [`Variant`].

use std::collections::BTreeMap;
use std::sync::OnceLock;

use bytes::Bytes;

use crate::proto::client::{ClientInfo, Join, Leave, Publication, Push, Reply};
use crate::protocol::{self, EncodeError, ProtocolType, delta};

/// Which form of a publication a subscriber gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// As published.
    Plain,
    /// Whole, for a subscriber that negotiated delta compression (JSON: data as a string).
    DeltaFull,
    /// A patch against the previous publication, for a delta subscriber known to hold it
    /// (falls back to [`Variant::DeltaFull`] when there is no patch worth sending).
    DeltaPatch,
}

type Encoded = OnceLock<Result<Bytes, EncodeError>>;

#[derive(Debug)]
enum PreparedKind {
    /// `late`: it reached this node more than `client.channel_position_max_time_lag` after it
    /// was published, so positioned subscribers must not take it as in order.
    Publication {
        offset: u64,
        epoch: String,
        late: bool,
    },
    JoinLeave,
}

/// A push to many subscribers, encoded lazily and at most once per protocol.
#[derive(Debug)]
pub struct Prepared {
    reply: Reply,
    kind: PreparedKind,
    encoded: [Encoded; ProtocolType::COUNT],
    /// The previous publication's data, when the broker supplied it for delta compression.
    delta_base: Option<Bytes>,
    /// The fossil patch from `delta_base` to this publication's data, if it pays.
    patch: OnceLock<Option<Bytes>>,
    delta_full: [Encoded; ProtocolType::COUNT],
    delta_patch: [Encoded; ProtocolType::COUNT],
}

impl Prepared {
    /// What the push is, as the metrics name it.
    pub fn frame_type(&self) -> crate::metrics::FrameType {
        self.reply.push.as_ref().map_or(crate::metrics::FrameType::Unknown, protocol::push_frame_type)
    }

    /// A publication push; `epoch` is attached to the wire message only for offset 1, as
    /// Centrifugo does (clients learn epochs from subscribe and history results).
    pub fn publication(channel: &str, publication: Publication, epoch: &str) -> Self {
        Self::publication_checked(channel, publication, epoch, 0)
    }

    /// [`Self::publication`], marked late when its publish time (`time`, Unix milliseconds, 0
    /// when unknown) is more than `max_lag_ms` ago (0: no limit).
    pub fn publication_checked(
        channel: &str,
        mut publication: Publication,
        epoch: &str,
        max_lag_ms: i64,
    ) -> Self {
        let late = max_lag_ms > 0
            && publication.time > 0
            && crate::common::unix_millis() - publication.time > max_lag_ms;
        // Publish times are for this check only; clients never see them (as Centrifugo's).
        publication.time = 0;
        if publication.offset == 1 {
            publication.epoch = epoch.to_owned();
        }
        // Offset 0 (no history) reads as "no position" in `position()`.
        let kind = PreparedKind::Publication { offset: publication.offset, epoch: epoch.to_owned(), late };
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
        Self {
            reply: Reply { push: Some(push), ..Default::default() },
            kind,
            encoded: Default::default(),
            delta_base: None,
            patch: OnceLock::new(),
            delta_full: Default::default(),
            delta_patch: Default::default(),
        }
    }

    /// Attaches the previous publication's data, against which delta subscribers get patches.
    pub fn with_delta_base(mut self, base: Option<Bytes>) -> Self {
        self.delta_base = base;
        self
    }

    /// Stream position of a publication with history, else `None`.
    pub fn position(&self) -> Option<(u64, &str)> {
        match &self.kind {
            PreparedKind::Publication { offset, epoch, .. } if *offset > 0 => Some((*offset, epoch)),
            _ => None,
        }
    }

    /// Whether it arrived too late for positioned subscribers (see [`Self::publication_checked`]).
    pub fn is_late(&self) -> bool {
        matches!(self.kind, PreparedKind::Publication { late: true, .. })
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

    /// The encoded reply in `variant` for `protocol`, computed on first use and shared by every
    /// subscriber that gets the same form.
    pub fn encoded_as(&self, protocol: ProtocolType, variant: Variant) -> Result<Bytes, EncodeError> {
        let Some(publication) = self.carried() else { return self.encoded(protocol) };
        match variant {
            Variant::Plain => self.encoded(protocol),
            Variant::DeltaFull if protocol == ProtocolType::Protobuf => self.encoded(protocol),
            Variant::DeltaFull => self.delta_full[protocol.index()]
                .get_or_init(|| self.encode_with(protocol, delta::full(publication.clone(), protocol)?))
                .clone(),
            Variant::DeltaPatch => self.delta_patch[protocol.index()]
                .get_or_init(|| match self.patch().and_then(|p| delta::patched(publication, p, protocol)) {
                    Some(patched) => self.encode_with(protocol, patched),
                    None => self.encoded_as(protocol, Variant::DeltaFull),
                })
                .clone(),
        }
    }

    fn carried(&self) -> Option<&Publication> {
        self.reply.push.as_ref()?.r#pub.as_ref()
    }

    fn patch(&self) -> Option<&Bytes> {
        self.patch
            .get_or_init(|| {
                let (base, publication) = (self.delta_base.as_ref()?, self.carried()?);
                delta::patch_bytes(base, &publication.data)
            })
            .as_ref()
    }

    /// This push carrying `publication` instead of its own.
    fn encode_with(&self, protocol: ProtocolType, publication: Publication) -> Result<Bytes, EncodeError> {
        let mut reply = self.reply.clone();
        if let Some(push) = reply.push.as_mut() {
            push.r#pub = Some(publication);
        }
        protocol::encode_reply(protocol, &reply)
    }
}
