//! Channel names (namespaces, `#` user boundaries, regexes, the 255 limit): resolved or refused.
#![no_main]
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use spinwire::channel::ChannelRules;

static RULES: LazyLock<(ChannelRules, usize)> = LazyLock::new(|| {
    let file = serde_json::json!({"channel": {"namespaces": [
        {"name": "chat"}, {"name": "strict", "channel_regex": "^[a-z]{1,8}$"}
    ]}});
    let config = spinwire::config::build(Some(file), &|_| None).unwrap().config;
    (ChannelRules::new(&config.channel), config.channel.max_length)
});

fuzz_target!(|input: &[u8]| {
    let (rules, max_length) = &*RULES;
    let name = String::from_utf8_lossy(input);
    if let Ok(resolved) = rules.resolve(&name) {
        assert!(name.len() <= *max_length);
        let _ = rules.is_user_limited(&name, &resolved.options);
    }
});
