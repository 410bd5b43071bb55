//! permessage-deflate's inbound half on raw WebSocket bytes: bounded output, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use spinwire::protocol::deflate::Inflater;

fuzz_target!(|input: &[u8]| {
    let mut inflater = Inflater::new(4096, 16 * 1024);
    let mut out = Vec::new();
    for chunk in input.chunks(61) {
        inflater.push(chunk, &mut out);
    }
    assert!(out.len() <= input.len().max(1) * (16 * 1024 / 8 + 16));
});
