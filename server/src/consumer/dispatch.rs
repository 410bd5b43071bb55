//! From a consumed message to an API call: the command shapes Centrifugo's consumers accept,
//! and what the outcome means for the message (acknowledge, skip, or retry).
//!
//! A message is a command (`method` and `payload`, the method possibly carried beside the
//! body in a header or field) or, in publication data mode, data to publish with its channels
//! and fields beside it. As in Centrifugo, only the internal error (100) is worth a retry:
//! every other API error would come back the same, so the message is acknowledged, logged and
//! counted as skipped.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::api::{ApiError, Executor};
use crate::config::PublicationFieldNames;
use crate::proto::api::{
    BroadcastRequest, DisconnectRequest, HistoryRemoveRequest, PublishRequest, RefreshRequest,
    SubscribeRequest, UnsubscribeRequest,
};

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Executed: acknowledge it.
    Done,
    /// Acknowledged without effect, for `reason` (a metrics label); retrying cannot help.
    Skipped(SkipReason),
    /// A transient failure: leave it unacknowledged and try again after a backoff.
    Retry(String),
}

/// Why a message was acknowledged without effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Not a command: unparseable JSON, a missing field, a bad header value.
    Malformed,
    /// A method consumers do not execute (Centrifugo's list: publish, broadcast, subscribe,
    /// unsubscribe, disconnect, history_remove, refresh).
    UnsupportedMethod,
    /// The API refused it (any error but 100: unknown channel, bad request…).
    Rejected,
    /// Publication data mode without channels.
    NoChannels,
}

impl SkipReason {
    pub fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnsupportedMethod => "unsupported_method",
            Self::Rejected => "rejected",
            Self::NoChannels => "no_channels",
        }
    }
}

/// A publication in publication data mode: the body, and the fields found beside it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsumedPublication {
    pub channels: Vec<String>,
    pub data: Bytes,
    pub idempotency_key: String,
    pub delta: bool,
    pub tags: BTreeMap<String, String>,
    pub version: u64,
    pub version_epoch: String,
}

impl ConsumedPublication {
    /// A message in publication data mode: `data` is its body, `field` reads a header (or
    /// stream field) by name and `names_of_fields` lists their names, for the tags (only the
    /// tag fields' values are read). `None` when `delta` or `version` does not parse (Go's
    /// `ParseBool`, a `u64`).
    pub fn from_fields<'a>(
        names: &PublicationFieldNames,
        data: Bytes,
        field: impl Fn(&str) -> Option<String>,
        names_of_fields: impl Iterator<Item = &'a str>,
    ) -> Option<Self> {
        let named = |name: &str| if name.is_empty() { None } else { field(name) };
        let delta = match named(&names.delta) {
            Some(value) => super::parse_bool(&value)?,
            None => false,
        };
        let version = match named(&names.version) {
            Some(value) => value.parse().ok()?,
            None => 0,
        };
        let prefix = names.tags_prefix.as_str();
        let tags = names_of_fields
            .filter(|_| !prefix.is_empty())
            .filter_map(|name| Some((name.strip_prefix(prefix)?.to_owned(), field(name)?)))
            .collect();
        Some(Self {
            channels: named(&names.channels).unwrap_or_default().split(',').map(str::to_owned).collect(),
            data,
            idempotency_key: named(&names.idempotency_key).unwrap_or_default(),
            delta,
            tags,
            version,
            version_epoch: named(&names.version_epoch).unwrap_or_default(),
        })
    }
}

/// `{"method": …, "payload": …}`: the payload is a JSON value, or a string holding one (as
/// change-data-capture tools write a JSONB column).
#[derive(serde::Deserialize)]
struct MethodWithPayload<'a> {
    #[serde(default)]
    method: String,
    #[serde(borrow)]
    payload: Option<&'a serde_json::value::RawValue>,
}

/// Runs consumed commands through the API executor (metrics protocol `consuming`).
#[derive(Debug, Clone)]
pub struct Dispatcher {
    executor: Executor,
}

impl Dispatcher {
    pub fn new(executor: Executor) -> Self {
        Self { executor: executor.with_protocol("consuming") }
    }

    /// A command message: `method` when it came beside the body (header, field), else the
    /// body is `{"method", "payload"}`.
    pub async fn command(&self, method: Option<&str>, body: &[u8]) -> Outcome {
        match method.filter(|m| !m.is_empty()) {
            Some(method) => self.run(method, body).await,
            None => {
                let Ok(envelope) = serde_json::from_slice::<MethodWithPayload<'_>>(body) else {
                    return Outcome::Skipped(SkipReason::Malformed);
                };
                let Some(payload) = envelope.payload else {
                    return Outcome::Skipped(SkipReason::Malformed);
                };
                let raw = payload.get();
                if raw.starts_with('"') {
                    let Ok(text) = serde_json::from_str::<String>(raw) else {
                        return Outcome::Skipped(SkipReason::Malformed);
                    };
                    self.run(&envelope.method, text.as_bytes()).await
                } else {
                    self.run(&envelope.method, raw.as_bytes()).await
                }
            }
        }
    }

    /// A message in publication data mode: one publish, or a broadcast to several channels.
    pub async fn publication(&self, publication: ConsumedPublication) -> Outcome {
        let ConsumedPublication { mut channels, data, idempotency_key, delta, tags, version, version_epoch } =
            publication;
        channels.retain(|c| !c.is_empty());
        match channels.len() {
            0 => Outcome::Skipped(SkipReason::NoChannels),
            1 => {
                let channel = channels.pop().unwrap_or_default();
                let request = PublishRequest {
                    channel,
                    data,
                    idempotency_key,
                    delta,
                    tags,
                    version,
                    version_epoch,
                    ..Default::default()
                };
                self.observed("publish", self.executor.publish(request)).await
            }
            _ => {
                let request = BroadcastRequest {
                    channels,
                    data,
                    idempotency_key,
                    delta,
                    tags,
                    version,
                    version_epoch,
                    ..Default::default()
                };
                self.broadcast(request).await
            }
        }
    }

    async fn run(&self, method: &str, payload: &[u8]) -> Outcome {
        let e = &self.executor;
        match method {
            "publish" => self.decoded(method, payload, |r: PublishRequest| e.publish(r)).await,
            "broadcast" => match decode::<BroadcastRequest>(payload) {
                Some(request) => self.broadcast(request).await,
                None => self.malformed(method),
            },
            "subscribe" => self.decoded(method, payload, |r: SubscribeRequest| e.subscribe(r)).await,
            "unsubscribe" => self.decoded(method, payload, |r: UnsubscribeRequest| e.unsubscribe(r)).await,
            "disconnect" => self.decoded(method, payload, |r: DisconnectRequest| e.disconnect(r)).await,
            "history_remove" => {
                self.decoded(method, payload, |r: HistoryRemoveRequest| e.history_remove(r)).await
            }
            "refresh" => self.decoded(method, payload, |r: RefreshRequest| e.refresh(r)).await,
            _ => Outcome::Skipped(SkipReason::UnsupportedMethod),
        }
    }

    async fn decoded<Req, Res, Fut>(
        &self,
        method: &str,
        payload: &[u8],
        call: impl FnOnce(Req) -> Fut,
    ) -> Outcome
    where
        Req: DeserializeOwned,
        Fut: Future<Output = Result<Res, ApiError>>,
    {
        match decode::<Req>(payload) {
            Some(request) => self.observed(method, call(request)).await,
            None => self.malformed(method),
        }
    }

    fn malformed(&self, method: &str) -> Outcome {
        self.executor.observe_failure(method, "unmarshal");
        Outcome::Skipped(SkipReason::Malformed)
    }

    async fn observed<Res>(
        &self,
        method: &str,
        call: impl Future<Output = Result<Res, ApiError>>,
    ) -> Outcome {
        let started = std::time::Instant::now();
        let result = call.await;
        self.executor.observe(method, started, &result);
        match result {
            Ok(_) => Outcome::Done,
            Err(error) => outcome_of(&error),
        }
    }

    /// A broadcast is retried when any of its channels failed internally (idempotency keys
    /// keep the channels that succeeded from seeing it twice).
    async fn broadcast(&self, request: BroadcastRequest) -> Outcome {
        let started = std::time::Instant::now();
        let result = self.executor.broadcast(request).await;
        self.executor.observe("broadcast", started, &result);
        match result {
            Err(error) => outcome_of(&error),
            Ok(result) => {
                match result.responses.iter().filter_map(|r| r.error.as_ref()).find(|e| e.code == 100) {
                    Some(error) => Outcome::Retry(format!("broadcast: {} {}", error.code, error.message)),
                    None => Outcome::Done,
                }
            }
        }
    }
}

fn outcome_of(error: &ApiError) -> Outcome {
    if error.code == ApiError::INTERNAL.code {
        Outcome::Retry(format!("{}: {}", error.code, error.message))
    } else {
        Outcome::Skipped(SkipReason::Rejected)
    }
}

fn decode<T: DeserializeOwned>(payload: &[u8]) -> Option<T> {
    serde_json::from_slice(if payload.is_empty() { b"{}" } else { payload }).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::Node;

    fn dispatcher() -> Dispatcher {
        let config = crate::config::build(None, &|_| None).unwrap().config;
        Dispatcher::new(Executor::new(Node::new(config).unwrap()))
    }

    #[tokio::test]
    async fn commands_come_with_the_method_beside_or_inside_the_body() {
        let d = dispatcher();
        let publish = br#"{"channel":"news","data":{"n":1}}"#;
        assert_eq!(d.command(Some("publish"), publish).await, Outcome::Done);
        let envelope = br#"{"method":"publish","payload":{"channel":"news","data":{"n":2}}}"#;
        assert_eq!(d.command(None, envelope).await, Outcome::Done);
        // A payload stored as a JSON string (a JSONB column through CDC) is the same command.
        let stringly = br#"{"method":"publish","payload":"{\"channel\":\"news\",\"data\":{\"n\":3}}"}"#;
        assert_eq!(d.command(Some(""), stringly).await, Outcome::Done);
    }

    #[tokio::test]
    async fn what_cannot_be_executed_is_skipped_with_its_reason() {
        let d = dispatcher();
        let skipped = |r| Outcome::Skipped(r);
        assert_eq!(d.command(None, b"not json").await, skipped(SkipReason::Malformed));
        assert_eq!(d.command(None, br#"{"method":"publish"}"#).await, skipped(SkipReason::Malformed));
        assert_eq!(d.command(Some("publish"), br#"{"channel":5}"#).await, skipped(SkipReason::Malformed));
        assert_eq!(
            d.command(Some("presence"), br#"{"channel":"a"}"#).await,
            skipped(SkipReason::UnsupportedMethod)
        );
        // Error 107 (no channel) would come back every time: acknowledged, not retried.
        assert_eq!(d.command(Some("publish"), br#"{"data":{}}"#).await, skipped(SkipReason::Rejected));
        let nowhere = ConsumedPublication { channels: vec![String::new()], ..Default::default() };
        assert_eq!(d.publication(nowhere).await, skipped(SkipReason::NoChannels));
    }

    #[tokio::test]
    async fn publication_data_mode_publishes_or_broadcasts() {
        let d = dispatcher();
        let one = ConsumedPublication {
            channels: vec!["a".into()],
            data: Bytes::from_static(b"{}"),
            idempotency_key: "k1".into(),
            ..Default::default()
        };
        assert_eq!(d.publication(one.clone()).await, Outcome::Done);
        let many = ConsumedPublication { channels: vec!["a".into(), "b".into()], ..one };
        assert_eq!(d.publication(many).await, Outcome::Done);
    }
}
