//! Golden tests: the exact bytes Centrifugo's SDKs send and expect.

use std::collections::BTreeMap;

use bytes::Bytes;
use prost::Message;

use super::*;
use crate::proto::client::{
    ClientInfo, ConnectResult, Error, HistoryResult, PresenceResult, PresenceStatsResult, Publication,
    PublishResult, Push, Reply, SubscribeResult, Unsubscribe,
};

fn json(reply: &Reply) -> String {
    String::from_utf8(encode_reply(ProtocolType::Json, reply).unwrap().to_vec()).unwrap()
}

#[test]
fn decodes_sdk_connect_and_subscribe() {
    let frame = br#"{"id":1,"connect":{"token":"abc","data":{"x":[1,2]},"name":"js","version":"5.7.1"}}
{"id":2,"subscribe":{"channel":"chat:index","recoverable":true,"flag":1,"offset":18446744073709551615}}
"#;
    let mut out = Vec::new();
    decode_commands(ProtocolType::Json, frame, &mut out).unwrap();
    assert_eq!(out.len(), 2);
    let connect = out[0].connect.as_ref().unwrap();
    assert_eq!(out[0].id, 1);
    assert_eq!(connect.token, "abc");
    assert_eq!(&connect.data[..], br#"{"x":[1,2]}"#);
    let subscribe = out[1].subscribe.as_ref().unwrap();
    assert_eq!(subscribe.channel, "chat:index");
    assert!(subscribe.recoverable);
    assert_eq!(subscribe.flag, 1);
    assert_eq!(subscribe.offset, u64::MAX);
}

#[test]
fn unknown_fields_and_nulls_are_ignored() {
    let mut out = Vec::new();
    decode_commands(
        ProtocolType::Json,
        br#"{"id":3,"future":{"a":1},"publish":{"channel":"c","data":"s","tags":null}}"#,
        &mut out,
    )
    .unwrap();
    assert_eq!(&out[0].publish.as_ref().unwrap().data[..], br#""s""#);
}

#[test]
fn empty_command_is_a_pong() {
    let mut out = Vec::new();
    decode_commands(ProtocolType::Json, b"{}", &mut out).unwrap();
    assert_eq!(out[0], Command::default());
    out.clear();
    decode_commands(ProtocolType::Protobuf, &[0], &mut out).unwrap();
    assert_eq!(out[0], Command::default());
}

#[test]
fn malformed_frames_are_rejected() {
    let mut out = Vec::new();
    assert!(matches!(
        decode_commands(ProtocolType::Json, b"{\"id\":1,", &mut out),
        Err(DecodeError::Json(_))
    ));
    assert_eq!(decode_commands(ProtocolType::Json, b"\n\n", &mut out), Err(DecodeError::Empty));
    assert_eq!(decode_commands(ProtocolType::Protobuf, b"", &mut out), Err(DecodeError::Empty));
    // Declares 100 bytes but carries 2: rejected before any allocation of the declared size.
    assert_eq!(
        decode_commands(ProtocolType::Protobuf, &[100, 1, 2], &mut out),
        Err(DecodeError::Truncated { declared: 100, available: 2 })
    );
    // A 10-byte varint of all continuation bits.
    assert!(decode_commands(ProtocolType::Protobuf, &[0xff; 11], &mut out).is_err());
}

#[test]
fn protobuf_frames_are_length_delimited() {
    let command = Command { id: 7, ..Default::default() };
    let mut frame = Vec::new();
    command.encode_length_delimited(&mut frame).unwrap();
    command.encode_length_delimited(&mut frame).unwrap();
    let mut out = Vec::new();
    decode_commands(ProtocolType::Protobuf, &frame, &mut out).unwrap();
    assert_eq!(out, vec![command.clone(), command]);
}

#[test]
fn connect_reply_shape() {
    let reply = Reply {
        id: 1,
        connect: Some(ConnectResult {
            client: "c1".into(),
            version: "0.1.0".into(),
            expires: true,
            ttl: 3599,
            ping: 25,
            pong: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        json(&reply),
        r#"{"id":1,"connect":{"client":"c1","version":"0.1.0","expires":true,"ttl":3599,"ping":25,"pong":true}}"#
    );
}

#[test]
fn empty_results_and_ping() {
    assert_eq!(json(&Reply::default()), "{}");
    let reply = Reply { id: 3, publish: Some(PublishResult {}), ..Default::default() };
    assert_eq!(json(&reply), r#"{"id":3,"publish":{}}"#);
    let reply = Reply { id: 2, subscribe: Some(SubscribeResult::default()), ..Default::default() };
    assert_eq!(json(&reply), r#"{"id":2,"subscribe":{}}"#);
    assert_eq!(&encode_reply(ProtocolType::Protobuf, &Reply::default()).unwrap()[..], &[0]);
}

#[test]
fn error_reply_shape() {
    let reply = Reply {
        id: 4,
        error: Some(Error { code: 103, message: "permission denied".into(), temporary: false }),
        ..Default::default()
    };
    assert_eq!(json(&reply), r#"{"id":4,"error":{"code":103,"message":"permission denied"}}"#);
    let reply = Reply {
        id: 5,
        error: Some(Error { code: 100, message: "internal server error".into(), temporary: true }),
        ..Default::default()
    };
    assert_eq!(
        json(&reply),
        r#"{"id":5,"error":{"code":100,"message":"internal server error","temporary":true}}"#
    );
}

#[test]
fn publication_push_embeds_raw_json() {
    let push = Push {
        channel: "chat:index".into(),
        r#pub: Some(Publication {
            data: Bytes::from_static(b"{\"text\":\n\"hi\"}"),
            offset: 18,
            info: Some(ClientInfo {
                user: "42".into(),
                client: "c".into(),
                conn_info: Bytes::from_static(b"{\"name\":\"Alex\"}"),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let reply = Reply { push: Some(push), ..Default::default() };
    assert_eq!(
        json(&reply),
        r#"{"push":{"channel":"chat:index","pub":{"data":{"text":"hi"},"info":{"user":"42","client":"c","conn_info":{"name":"Alex"}},"offset":18}}}"#
    );
}

#[test]
fn binary_payload_cannot_go_to_json() {
    let push = Push {
        channel: "c".into(),
        r#pub: Some(Publication { data: Bytes::from_static(&[0xff, 0x00]), ..Default::default() }),
        ..Default::default()
    };
    let reply = Reply { push: Some(push), ..Default::default() };
    assert_eq!(encode_reply(ProtocolType::Json, &reply), Err(EncodeError::NotJson));
    assert!(encode_reply(ProtocolType::Protobuf, &reply).is_ok());
}

#[test]
fn always_emitted_fields() {
    let reply = Reply { id: 6, history: Some(HistoryResult::default()), ..Default::default() };
    assert_eq!(json(&reply), r#"{"id":6,"history":{"publications":[],"epoch":"","offset":0}}"#);
    let reply = Reply { id: 7, presence_stats: Some(PresenceStatsResult::default()), ..Default::default() };
    assert_eq!(json(&reply), r#"{"id":7,"presence_stats":{"num_clients":0,"num_users":0}}"#);
    let mut presence = BTreeMap::new();
    presence.insert("c1".to_string(), ClientInfo { client: "c1".into(), ..Default::default() });
    let reply = Reply { id: 8, presence: Some(PresenceResult { presence }), ..Default::default() };
    assert_eq!(json(&reply), r#"{"id":8,"presence":{"presence":{"c1":{"user":"","client":"c1"}}}}"#);
}

#[test]
fn unsubscribe_push_shape() {
    let reply = Reply {
        push: Some(Push {
            channel: "chat:index".into(),
            unsubscribe: Some(Unsubscribe { code: 2500, reason: "insufficient state".into() }),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        json(&reply),
        r#"{"push":{"channel":"chat:index","unsubscribe":{"code":2500,"reason":"insufficient state"}}}"#
    );
}

/// A publication push as the hub queues it, for both framings.
fn queued_publication(protocol: ProtocolType) -> (Bytes, Push) {
    let push = Push {
        channel: "chat:index".into(),
        r#pub: Some(Publication {
            data: Bytes::from_static(b"{\"text\":\"hi\"}"),
            offset: 7,
            ..Default::default()
        }),
        ..Default::default()
    };
    let reply = Reply { push: Some(push.clone()), ..Default::default() };
    (encode_reply(protocol, &reply).unwrap(), push)
}

#[test]
fn uni_transports_get_the_bare_push_out_of_a_queued_reply() {
    let (queued, push) = queued_publication(ProtocolType::Json);
    let bare = reply_into_push(ProtocolType::Json, &queued).unwrap();
    assert_eq!(bare, encode_push(ProtocolType::Json, &push).unwrap());
    assert_eq!(&bare[..], br#"{"channel":"chat:index","pub":{"data":{"text":"hi"},"offset":7}}"#);

    let (queued, push) = queued_publication(ProtocolType::Protobuf);
    let bare = reply_into_push(ProtocolType::Protobuf, &queued).unwrap();
    assert_eq!(Push::decode(bare.clone()).unwrap(), push);
    // A slice of the shared encoding, not a copy.
    assert!(queued.as_ptr_range().contains(&bare.as_ptr()));
}

#[test]
fn pings_become_empty_pushes_and_command_replies_are_not_pushes() {
    let ping = encode_reply(ProtocolType::Json, &Reply::default()).unwrap();
    assert_eq!(&reply_into_push(ProtocolType::Json, &ping).unwrap()[..], b"{}");
    let ping = encode_reply(ProtocolType::Protobuf, &Reply::default()).unwrap();
    assert!(reply_into_push(ProtocolType::Protobuf, &ping).unwrap().is_empty());

    let result = Reply { id: 3, error: Some(Default::default()), ..Default::default() };
    for protocol in [ProtocolType::Json, ProtocolType::Protobuf] {
        let encoded = encode_reply(protocol, &result).unwrap();
        assert_eq!(reply_into_push(protocol, &encoded), None);
    }
}

#[test]
fn undelimit_strips_only_the_length_prefix() {
    let reply = Reply { id: 300, ..Default::default() };
    let queued = encode_reply(ProtocolType::Protobuf, &reply).unwrap();
    let inner = undelimit(&queued);
    assert_eq!(Reply::decode(inner.clone()).unwrap(), reply);
    assert_eq!(inner.len() + 1, queued.len());
}

#[test]
fn emulation_requests_in_both_encodings() {
    let json = br#"{"node":"n1","session":"s1","data":"{\"id\":2,\"subscribe\":{\"channel\":\"a\"}}"}"#;
    let frame = decode_emulation_request(ProtocolType::Json, json).unwrap();
    assert_eq!((frame.node.as_str(), frame.session.as_str()), ("n1", "s1"));
    assert_eq!(&frame.frame[..], br#"{"id":2,"subscribe":{"channel":"a"}}"#);

    let request = crate::proto::client::EmulationRequest {
        node: "n1".into(),
        session: "s1".into(),
        data: Bytes::from_static(&[2, 8, 3]),
    };
    let frame = decode_emulation_request(ProtocolType::Protobuf, &request.encode_to_vec()).unwrap();
    assert_eq!(&frame.frame[..], &[2, 8, 3]);

    assert!(decode_emulation_request(ProtocolType::Json, b"not json").is_none());
    let no_session = br#"{"node":"n1","data":"x"}"#;
    assert!(decode_emulation_request(ProtocolType::Json, no_session).is_none(), "session is required");
}

#[test]
fn connect_requests() {
    use crate::proto::client::ConnectRequest;
    assert_eq!(decode_connect_request(b"").unwrap(), ConnectRequest::default());
    assert_eq!(decode_connect_request(br#"{"token":"t"}"#).unwrap().token, "t");
    assert!(decode_connect_request(b"{oops").is_none());
}
