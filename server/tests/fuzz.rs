//! S7, the CI tier: property-based fuzzing of everything that parses client or backend input
//! before any trust is established: the JSON command decoder (newline batches), the
//! varint-delimited Protobuf stream, the stream deframer of the HTTP transports, the
//! permessage-deflate inflater, JWT parsing and claims, channel names, emulation bodies and the
//! connect request of the uni transports, and the server API's JSON bodies. Inputs are random bytes and mutations of valid
//! inputs (the committed corpus under `tests/fuzz-corpus/` seeds both); each must be decoded or
//! refused with an error, never panic, and never yield more than its limit.
//!
//! `SPINWIRE_FUZZ_CASES` sets the cases per target (CI: 2,000; by hand: 1,000,000 or more).
//! The same corpus is replayed over the wire to a live server by `fuzz_replay.rs`.

use std::path::PathBuf;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use spinwire::auth::{TokenVerifier, mint_hs256};
use spinwire::channel::ChannelRules;
use spinwire::protocol::deflate::Inflater;
use spinwire::protocol::stream_framing::Deframer;
use spinwire::protocol::{ProtocolType, decode_commands, decode_connect_request, decode_emulation_request};

fn cases() -> u32 {
    std::env::var("SPINWIRE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
}

/// The committed corpus: every file under `tests/fuzz-corpus/<target>/`.
fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fuzz-corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir:?}: {e}"))
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    files.iter().map(|path| std::fs::read(path).unwrap()).collect()
}

/// Random bytes, or a corpus entry with a few bytes flipped, cut or repeated.
fn inputs(target: &str) -> BoxedStrategy<Vec<u8>> {
    let seeds = corpus(target);
    assert!(!seeds.is_empty(), "no corpus for {target}");
    let mutated =
        (0..seeds.len(), prop::collection::vec((any::<usize>(), any::<u8>()), 0..8), any::<usize>(), 0..3u8)
            .prop_map(move |(seed, flips, cut, repeat)| {
                let mut input = seeds[seed].clone();
                for (at, byte) in flips {
                    if !input.is_empty() {
                        let at = at % input.len();
                        input[at] = byte;
                    }
                }
                if !input.is_empty() && cut % 4 == 0 {
                    input.truncate(cut % input.len());
                }
                let once = input.clone();
                for _ in 0..repeat {
                    input.extend_from_slice(&once);
                }
                input
            });
    prop_oneof![prop::collection::vec(any::<u8>(), 0..4096), mutated].boxed()
}

fn run(target: &str, check: impl Fn(&[u8])) {
    let mut runner =
        TestRunner::new(Config { cases: cases(), failure_persistence: None, ..Config::default() });
    for seed in corpus(target) {
        check(&seed);
    }
    runner
        .run(&inputs(target), |input| {
            check(&input);
            Ok(())
        })
        .unwrap_or_else(|failure| panic!("{target}: {failure}"));
}

#[test]
fn command_decoders_refuse_bad_input_without_panicking() {
    for (target, protocol) in
        [("json_commands", ProtocolType::Json), ("protobuf_commands", ProtocolType::Protobuf)]
    {
        run(target, |input| {
            let mut out = Vec::new();
            let _ = decode_commands(protocol, input, &mut out);
            assert!(out.len() <= input.len(), "more commands than bytes");
        });
    }
}

#[test]
fn the_stream_deframer_holds_at_most_its_limit() {
    const LIMIT: usize = 1024;
    for (target, protocol) in
        [("json_commands", ProtocolType::Json), ("protobuf_commands", ProtocolType::Protobuf)]
    {
        run(target, |input| {
            let mut deframer = Deframer::new(protocol, LIMIT);
            for chunk in input.chunks(97) {
                deframer.push(chunk);
                loop {
                    match deframer.next_frame() {
                        Ok(Some(frame)) => assert!(!frame.is_empty()),
                        Ok(None) => break,
                        Err(_) => return, // refused: the transport closes
                    }
                }
                assert!(
                    deframer.pending() <= LIMIT + 97 + 10,
                    "buffered {} past the limit",
                    deframer.pending()
                );
            }
        });
    }
}

#[test]
fn the_inflater_never_yields_more_than_its_limits() {
    const WIRE: usize = 4096;
    const INFLATED: usize = 16 * 1024;
    run("websocket_frames", |input| {
        let mut inflater = Inflater::new(WIRE, INFLATED);
        let mut out = Vec::new();
        for chunk in input.chunks(61) {
            inflater.push(chunk, &mut out);
        }
        // What it passes on: frames, each at most the inflated limit plus its header.
        assert!(
            out.len() <= input.len().max(1) * (INFLATED / 8 + 16),
            "{} bytes out of {}",
            out.len(),
            input.len()
        );
    });
}

#[test]
fn tokens_are_verified_or_refused_without_panicking() {
    let config = spinwire::config::build(
        Some(serde_json::json!({"client": {"token": {"hmac_secret_key": "fuzz"}}})),
        &|_| None,
    )
    .unwrap()
    .config;
    let verifier = TokenVerifier::new(&config.client.token, "client.token", false).unwrap();
    let valid =
        mint_hs256("fuzz", &serde_json::json!({"sub": "u", "exp": 4_000_000_000i64, "channels": ["a"]}));
    assert!(verifier.verify_connect(&valid, 1).is_ok(), "the valid token verifies");
    run("jwt", |input| {
        let token = String::from_utf8_lossy(input);
        let _ = verifier.verify_connect(&token, 1);
        let _ = verifier.verify_subscribe(&token, 1);
    });
}

#[test]
fn channel_names_resolve_or_are_refused() {
    let config = spinwire::config::build(
        Some(serde_json::json!({"channel": {"namespaces": [
            {"name": "chat"}, {"name": "strict", "channel_regex": "^[a-z]{1,8}$"}
        ]}})),
        &|_| None,
    )
    .unwrap()
    .config;
    let rules = ChannelRules::new(&config.channel);
    run("channels", |input| {
        let name = String::from_utf8_lossy(input);
        if let Ok(resolved) = rules.resolve(&name) {
            assert!(name.len() <= config.channel.max_length);
            let _ = rules.is_user_limited(&name, &resolved.options);
        }
    });
}

#[test]
fn emulation_bodies_and_uni_connects_decode_or_are_refused() {
    run("emulation", |input| {
        let _ = decode_emulation_request(ProtocolType::Json, input);
        let _ = decode_emulation_request(ProtocolType::Protobuf, input);
        let _ = decode_connect_request(input);
    });
}

/// The server API's JSON: every method (and the legacy newline-separated `POST /api`) answers
/// any body with 200 and a JSON envelope or with 400, against a live node on the memory engine.
#[test]
fn the_server_api_answers_every_body_with_json_or_400() {
    use http_body_util::BodyExt as _;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _entered = runtime.enter();
    let file = serde_json::json!({"channel": {
        "history_size": 10, "history_ttl": "60s",
        "namespaces": [{"name": "chat", "presence": true, "history_size": 10, "history_ttl": "60s"}]
    }});
    let config = spinwire::config::build(Some(file), &|_| None).unwrap().config;
    let executor = spinwire::api::Executor::new(spinwire::node::Node::new(config).unwrap());
    let methods: Vec<Option<&str>> = spinwire::api::http::method_names().map(Some).chain([None]).collect();
    // The seeds named after a method are well-formed calls of it: they must get through.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fuzz-corpus/api");
    for method in &methods {
        let stem = method.unwrap_or("legacy");
        let Ok(seed) = std::fs::read(dir.join(format!("{stem}.json"))) else { continue };
        let response = runtime.block_on(spinwire::api::http::answer(&seed, &executor, *method, false));
        assert_eq!(response.status(), 200, "the {stem} seed is a valid call");
    }
    run("api", |input| {
        for method in &methods {
            let response = runtime.block_on(spinwire::api::http::answer(input, &executor, *method, false));
            let status = response.status().as_u16();
            let body = runtime.block_on(response.into_body().collect()).unwrap().to_bytes();
            assert!(
                matches!(status, 200 | 400),
                "{method:?}: {status} for {:?}",
                String::from_utf8_lossy(input)
            );
            if status == 200 {
                // The legacy endpoint answers one JSON object per line.
                for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    serde_json::from_slice::<serde_json::Value>(line)
                        .unwrap_or_else(|e| panic!("{method:?}: not JSON ({e}): {body:?}"));
                }
            }
        }
    });
}
