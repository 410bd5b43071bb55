//! The server API's JSON bodies on every method and the legacy endpoint: a JSON answer or 400,
//! never a panic, against a live node on the memory engine.
#![no_main]
use std::sync::LazyLock;

use http_body_util::BodyExt as _;
use libfuzzer_sys::fuzz_target;
use spinwire::api::Executor;

struct Api {
    runtime: tokio::runtime::Runtime,
    executor: Executor,
    methods: Vec<Option<&'static str>>,
}

static API: LazyLock<Api> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let executor = {
        let _entered = runtime.enter();
        let file = serde_json::json!({"channel": {"namespaces": [
            {"name": "chat", "presence": true, "history_size": 10, "history_ttl": "60s"}
        ]}});
        let config = spinwire::config::build(Some(file), &|_| None).unwrap().config;
        Executor::new(spinwire::node::Node::new(config).unwrap())
    };
    let methods = spinwire::api::http::method_names().map(Some).chain([None]).collect();
    Api { runtime, executor, methods }
});

fuzz_target!(|input: &[u8]| {
    let api = &*API;
    // The first byte picks the method, so every method is reached from one corpus.
    let Some((&pick, body)) = input.split_first() else { return };
    let method = api.methods[pick as usize % api.methods.len()];
    let response = api.runtime.block_on(spinwire::api::http::answer(body, &api.executor, method, false));
    let status = response.status().as_u16();
    assert!(status == 200 || status == 400, "{method:?}: {status}");
    let body = api.runtime.block_on(response.into_body().collect()).unwrap().to_bytes();
    if status == 200 {
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            serde_json::from_slice::<serde_json::Value>(line).expect("a JSON answer");
        }
    }
});
