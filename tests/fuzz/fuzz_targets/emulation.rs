//! Emulation request bodies (both encodings) and uni-transport connect requests.
#![no_main]
use libfuzzer_sys::fuzz_target;
use spinwire::protocol::{ProtocolType, decode_connect_request, decode_emulation_request};

fuzz_target!(|body: &[u8]| {
    let _ = decode_emulation_request(ProtocolType::Json, body);
    let _ = decode_emulation_request(ProtocolType::Protobuf, body);
    let _ = decode_connect_request(body);
});
