//! JSON command frames (newline-separated batches): decoded or refused, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use spinwire::protocol::{ProtocolType, decode_commands};

fuzz_target!(|frame: &[u8]| {
    let mut out = Vec::new();
    let _ = decode_commands(ProtocolType::Json, frame, &mut out);
    assert!(out.len() <= frame.len());
});
