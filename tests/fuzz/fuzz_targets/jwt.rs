//! Connection and subscription tokens: verified or refused, never a panic.
#![no_main]
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use spinwire::auth::TokenVerifier;

static VERIFIER: LazyLock<TokenVerifier> = LazyLock::new(|| {
    let file = serde_json::json!({"client": {"token": {"hmac_secret_key": "fuzz"}}});
    let config = spinwire::config::build(Some(file), &|_| None).unwrap().config;
    TokenVerifier::new(&config.client.token, "client.token", false).unwrap()
});

fuzz_target!(|input: &[u8]| {
    let token = String::from_utf8_lossy(input);
    let _ = VERIFIER.verify_connect(&token, 1);
    let _ = VERIFIER.verify_subscribe(&token, 1);
});
