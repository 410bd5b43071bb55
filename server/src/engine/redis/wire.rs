//! What Spinwire keeps in Redis and sends through it: key names and PUB/SUB payloads.
//!
//! The layout is Centrifugo's (spec §9.1), so the data is readable with the same tools and a
//! mixed deployment would find its streams where it expects them:
//!
//! | purpose | key or PUB/SUB channel |
//! |---|---|
//! | publications | `P.client.<channel>` |
//! | history stream / meta | `P.stream.<channel>` / `P.stream.meta.<channel>` |
//! | history list / meta (`history_use_lists`) | `P.list.<channel>` / `P.list.meta.<channel>` |
//! | idempotent publish result | `P.result.<channel>.<key>` |
//! | presence | `P.presence.data.<channel>`, `P.presence.expire.<channel>` |
//! | per-user presence (`presence_user_mapping`) | `P.presence.user.clients.<channel>`, `P.presence.user.expire.<channel>` |
//! | node control | `P.control` (everyone), `P.node.<uid>` (one node) |
//!
//! On Redis Cluster the channel part is a hash tag (`{channel}`) so a channel's stream, meta,
//! results and presence share one slot and one Lua script can touch them all.
//!
//! A publication travels as the Protobuf `Publication`; with history it is prefixed by
//! `__p1:<offset>:<epoch>__`. A publication that asked for delta compression carries the
//! previous one too: `__d1:<offset>:<epoch>:<len>:<previous>:<len>:<publication>` (lengths in
//! bytes, decimal; an empty previous means there is none). Joins and leaves are `__j__`/`__l__`
//! plus a Protobuf `ClientInfo`.

use bytes::Bytes;
use prost::Message;

use crate::engine::StreamPosition;
use crate::proto::client::{ClientInfo, Publication};

/// Key and channel names for one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    /// Wrap the channel in a hash tag (Redis Cluster).
    cluster: bool,
}

impl Keys {
    pub fn new(prefix: &str, cluster: bool) -> Self {
        Self { prefix: prefix.to_owned(), cluster }
    }

    fn key(&self, kind: &str, channel: &str) -> String {
        if self.cluster {
            format!("{}.{kind}.{{{channel}}}", self.prefix)
        } else {
            format!("{}.{kind}.{channel}", self.prefix)
        }
    }

    /// The PUB/SUB channel carrying `channel`'s publications.
    pub fn pubsub(&self, channel: &str) -> String {
        self.key("client", channel)
    }

    /// The prefix of every publication PUB/SUB channel (for decoding incoming messages).
    pub fn pubsub_prefix(&self) -> String {
        format!("{}.client.", self.prefix)
    }

    /// Channel name from a publication PUB/SUB channel, or `None` for other traffic.
    pub fn channel_of<'a>(&self, pubsub: &'a str) -> Option<&'a str> {
        let rest = pubsub.strip_prefix(self.prefix.as_str())?.strip_prefix(".client.")?;
        if self.cluster { rest.strip_prefix('{')?.strip_suffix('}') } else { Some(rest) }
    }

    pub fn stream(&self, channel: &str) -> String {
        self.key("stream", channel)
    }

    /// History kept in a list, newest first, entries framed as `__p1:` messages.
    pub fn list(&self, channel: &str) -> String {
        self.key("list", channel)
    }

    pub fn list_meta(&self, channel: &str) -> String {
        self.key("list.meta", channel)
    }

    pub fn stream_meta(&self, channel: &str) -> String {
        self.key("stream.meta", channel)
    }

    pub fn result(&self, channel: &str, idempotency_key: &str) -> String {
        format!("{}.{idempotency_key}", self.key("result", channel))
    }

    pub fn presence_data(&self, channel: &str) -> String {
        self.key("presence.data", channel)
    }

    pub fn presence_expire(&self, channel: &str) -> String {
        self.key("presence.expire", channel)
    }

    /// Users → their connection count in a channel (`presence_user_mapping`).
    pub fn presence_user_clients(&self, channel: &str) -> String {
        self.key("presence.user.clients", channel)
    }

    /// Users → when their presence expires (`presence_user_mapping`).
    pub fn presence_user_expire(&self, channel: &str) -> String {
        self.key("presence.user.expire", channel)
    }

    /// One of a map channel's keys (`state`, `keys`, `expire`, `version`, `stream`, `meta`).
    pub fn map(&self, kind: &str, channel: &str) -> String {
        self.key(&format!("map.{kind}"), channel)
    }

    pub fn map_result(&self, channel: &str, idempotency_key: &str) -> String {
        format!("{}.{idempotency_key}", self.key("map.result", channel))
    }

    /// The zset of map channels by their next key expiry (one per shard).
    pub fn map_cleanup(&self) -> String {
        format!("{}.map.cleanup", self.prefix)
    }

    /// Control messages for every node.
    pub fn control(&self) -> String {
        format!("{}.control", self.prefix)
    }

    /// Control messages for one node.
    pub fn node(&self, uid: &str) -> String {
        format!("{}.node.{uid}", self.prefix)
    }
}

/// A decoded PUB/SUB payload.
#[derive(Debug, PartialEq)]
pub enum BrokerMessage {
    /// A publication, its stream position and, with delta, the previous publication's data.
    Publication(Box<Publication>, StreamPosition, Option<Bytes>),
    Join(ClientInfo),
    Leave(ClientInfo),
}

/// Why a payload could not be decoded (a foreign writer or a newer format).
#[derive(Debug, PartialEq, Eq)]
pub struct Undecodable;

/// Encodes a publication without position (no history).
pub fn encode_plain(publication: &Publication) -> Vec<u8> {
    publication.encode_to_vec()
}

pub fn encode_join(info: &ClientInfo) -> Vec<u8> {
    let mut out = b"__j__".to_vec();
    info.encode(&mut out).expect("Vec grows");
    out
}

pub fn encode_leave(info: &ClientInfo) -> Vec<u8> {
    let mut out = b"__l__".to_vec();
    info.encode(&mut out).expect("Vec grows");
    out
}

/// Decodes one PUB/SUB payload. The offset in a `__p1` header wins over the one in the body
/// (the script writes the body before it knows the offset).
pub fn decode(payload: &[u8]) -> Result<BrokerMessage, Undecodable> {
    if let Some(rest) = payload.strip_prefix(b"__j__") {
        return ClientInfo::decode(rest).map(BrokerMessage::Join).map_err(|_| Undecodable);
    }
    if let Some(rest) = payload.strip_prefix(b"__l__") {
        return ClientInfo::decode(rest).map(BrokerMessage::Leave).map_err(|_| Undecodable);
    }
    if let Some(rest) = payload.strip_prefix(b"__p1:") {
        let end = find(rest, b"__").ok_or(Undecodable)?;
        let header = std::str::from_utf8(&rest[..end]).map_err(|_| Undecodable)?;
        let (offset, epoch) = header.split_once(':').ok_or(Undecodable)?;
        let offset: u64 = offset.parse().map_err(|_| Undecodable)?;
        let mut publication = settled(Publication::decode(&rest[end + 2..]).map_err(|_| Undecodable)?);
        publication.offset = offset;
        return Ok(BrokerMessage::Publication(
            Box::new(publication),
            StreamPosition { offset, epoch: epoch.to_owned() },
            None,
        ));
    }
    if let Some(rest) = payload.strip_prefix(b"__d1:") {
        return decode_delta(rest);
    }
    if payload.starts_with(b"__") {
        // Another header kind, not produced by Spinwire or Centrifugo 6.
        return Err(Undecodable);
    }
    let publication = settled(Publication::decode(payload).map_err(|_| Undecodable)?);
    Ok(BrokerMessage::Publication(Box::new(publication), StreamPosition::default(), None))
}

/// A map removal travels as the removed entry plus `removed = true` (so it keeps its key and
/// tags); what it no longer has is dropped here.
fn settled(mut publication: Publication) -> Publication {
    if publication.removed {
        publication.data = Bytes::new();
        publication.info = None;
        publication.version = 0;
    }
    publication
}

/// The body of a `__d1:` message: `<offset>:<epoch>:<len>:<previous>:<len>:<publication>`.
fn decode_delta(rest: &[u8]) -> Result<BrokerMessage, Undecodable> {
    let mut fields = LengthPrefixed { rest };
    let offset: u64 = fields.text()?.parse().map_err(|_| Undecodable)?;
    let epoch = fields.text()?.to_owned();
    let previous = fields.sized()?;
    let current = fields.sized()?;
    if !fields.rest.is_empty() {
        return Err(Undecodable);
    }
    let mut publication = settled(Publication::decode(current).map_err(|_| Undecodable)?);
    publication.offset = offset;
    let base = if previous.is_empty() {
        None
    } else {
        Some(Publication::decode(previous).map_err(|_| Undecodable)?.data)
    };
    Ok(BrokerMessage::Publication(Box::new(publication), StreamPosition { offset, epoch }, base))
}

/// Reads `:`-terminated fields and `<len>:<bytes>` fields off a byte string.
struct LengthPrefixed<'a> {
    rest: &'a [u8],
}

impl<'a> LengthPrefixed<'a> {
    fn text(&mut self) -> Result<&'a str, Undecodable> {
        let end = self.rest.iter().position(|&b| b == b':').ok_or(Undecodable)?;
        let text = std::str::from_utf8(&self.rest[..end]).map_err(|_| Undecodable)?;
        self.rest = &self.rest[end + 1..];
        Ok(text)
    }

    /// `<len>:<len bytes>` followed by `:` or the end.
    fn sized(&mut self) -> Result<&'a [u8], Undecodable> {
        let len: usize = self.text()?.parse().map_err(|_| Undecodable)?;
        if len > self.rest.len() {
            return Err(Undecodable);
        }
        let (value, rest) = self.rest.split_at(len);
        self.rest = rest.strip_prefix(b":").unwrap_or(rest);
        Ok(value)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Decodes a Protobuf publication stored in a history stream entry.
pub fn decode_stored(offset: u64, body: &[u8]) -> Option<Publication> {
    let mut publication = settled(Publication::decode(body).ok()?);
    publication.offset = offset;
    Some(publication)
}

pub fn decode_info(body: &[u8]) -> Option<ClientInfo> {
    ClientInfo::decode(body).ok()
}

/// Bytes of a value for Redis arguments.
pub fn bytes_of(message: &impl Message) -> Bytes {
    Bytes::from(message.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_plain_and_cluster() {
        let plain = Keys::new("centrifugo", false);
        assert_eq!(plain.pubsub("chat:1"), "centrifugo.client.chat:1");
        assert_eq!(plain.stream_meta("chat:1"), "centrifugo.stream.meta.chat:1");
        assert_eq!(plain.result("a", "k"), "centrifugo.result.a.k");
        assert_eq!(plain.channel_of("centrifugo.client.chat:1"), Some("chat:1"));
        assert_eq!(plain.channel_of("centrifugo.control"), None);
        let cluster = Keys::new("p", true);
        assert_eq!(cluster.stream("a.b"), "p.stream.{a.b}");
        assert_eq!(cluster.presence_data("x"), "p.presence.data.{x}");
        assert_eq!(cluster.channel_of("p.client.{a.b}"), Some("a.b"));
    }

    #[test]
    fn payloads_round_trip() {
        let publication = Publication { data: Bytes::from_static(b"{\"x\":1}"), ..Default::default() };
        let mut framed = b"__p1:7:abcd__".to_vec();
        framed.extend(encode_plain(&publication));
        let BrokerMessage::Publication(decoded, position, _) = decode(&framed).unwrap() else { panic!() };
        assert_eq!(decoded.data, publication.data);
        assert_eq!(decoded.offset, 7);
        assert_eq!(position, StreamPosition { offset: 7, epoch: "abcd".into() });

        let plain = decode(&encode_plain(&publication)).unwrap();
        assert_eq!(plain, BrokerMessage::Publication(Box::new(publication), StreamPosition::default(), None));

        let info = ClientInfo { user: "u".into(), client: "c".into(), ..Default::default() };
        assert_eq!(decode(&encode_join(&info)).unwrap(), BrokerMessage::Join(info.clone()));
        assert_eq!(decode(&encode_leave(&info)).unwrap(), BrokerMessage::Leave(info));
    }

    #[test]
    fn delta_payloads_carry_the_previous_data() {
        let previous =
            encode_plain(&Publication { data: Bytes::from_static(b"{\"x\":1}"), ..Default::default() });
        let current =
            encode_plain(&Publication { data: Bytes::from_static(b"{\"x\":2}"), ..Default::default() });
        let mut framed = format!("__d1:8:ep:{}:", previous.len()).into_bytes();
        framed.extend(&previous);
        framed.extend(format!(":{}:", current.len()).into_bytes());
        framed.extend(&current);
        let BrokerMessage::Publication(decoded, position, base) = decode(&framed).unwrap() else { panic!() };
        assert_eq!((decoded.offset, &decoded.data[..]), (8, &b"{\"x\":2}"[..]));
        assert_eq!(position, StreamPosition { offset: 8, epoch: "ep".into() });
        assert_eq!(base.as_deref(), Some(&b"{\"x\":1}"[..]));

        let mut first = b"__d1:1:ep:0::".to_vec();
        first.extend(format!("{}:", current.len()).into_bytes());
        first.extend(&current);
        let BrokerMessage::Publication(_, _, base) = decode(&first).unwrap() else { panic!() };
        assert_eq!(base, None);
    }

    #[test]
    fn foreign_payloads_are_refused_not_panicked_on() {
        for bad in [
            &b"__p1:x:e__"[..],
            b"__p1:1",
            b"__d1:1:e:0::1:x",
            b"__d1:1:e:99:x",
            b"__d1:",
            b"\xff\xff\xff",
            b"__j__\xff",
        ] {
            assert_eq!(decode(bad), Err(Undecodable), "{bad:?}");
        }
    }
}
