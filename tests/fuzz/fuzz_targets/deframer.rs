//! The HTTP transports' stream deframer, fed in small chunks: never holds more than its limit.
#![no_main]
use libfuzzer_sys::fuzz_target;
use spinwire::protocol::ProtocolType;
use spinwire::protocol::stream_framing::Deframer;

const LIMIT: usize = 1024;

fuzz_target!(|input: &[u8]| {
    for protocol in [ProtocolType::Json, ProtocolType::Protobuf] {
        let mut deframer = Deframer::new(protocol, LIMIT);
        for chunk in input.chunks(97) {
            deframer.push(chunk);
            loop {
                match deframer.next_frame() {
                    Ok(Some(frame)) => assert!(!frame.is_empty()),
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
            assert!(deframer.pending() <= LIMIT + 97 + 10);
        }
    }
});
