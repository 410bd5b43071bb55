//! The server's side of WebSocket framing (RFC 6455): data frames carrying a batch of
//! messages, close frames with Centrifugo's codes, pings. Server frames are final and
//! unmasked: a header, then the payload. Reading the client's frames is tungstenite's job.

use bytes::Bytes;

use super::ProtocolType;
use super::framing::Framing;

/// Longest frame header: 2 bytes plus a 64-bit length.
pub const MAX_HEADER: usize = 10;
const OPCODE_TEXT: u8 = 0x1;
const OPCODE_BINARY: u8 = 0x2;
const OPCODE_CLOSE: u8 = 0x8;
const OPCODE_PING: u8 = 0x9;
/// The first header bit an extension may use: permessage-deflate marks compressed messages.
const RSV1: u8 = 0x40;
/// Longest close reason: a control frame's payload is at most 125 bytes, 2 of them the code.
const MAX_CLOSE_REASON: usize = 123;

/// A ping with no payload.
pub const PING_FRAME: &[u8] = &[0x80 | OPCODE_PING, 0];
/// A close frame without a code (the answer to a client's close that had none).
pub const EMPTY_CLOSE_FRAME: &[u8] = &[0x80 | OPCODE_CLOSE, 0];

/// Text frames for JSON (our encoder's output is valid UTF-8), binary for Protobuf.
fn data_opcode(protocol: ProtocolType) -> u8 {
    match protocol {
        ProtocolType::Json => OPCODE_TEXT,
        ProtocolType::Protobuf => OPCODE_BINARY,
    }
}

/// Writes a final, unmasked frame header into `out`; returns its length.
fn frame_header(out: &mut [u8; MAX_HEADER], opcode: u8, len: usize) -> usize {
    out[0] = 0x80 | opcode;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if len <= usize::from(u16::MAX) {
        out[1] = 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// Appends one data frame carrying `messages`, its payload deflated (and RSV1 set) when it is
/// at least `min_size` bytes (permessage-deflate, [`super::deflate`]).
pub fn encode_deflated_data_frame(
    out: &mut Vec<u8>,
    protocol: ProtocolType,
    messages: &[Bytes],
    level: i32,
    min_size: usize,
) {
    let framing = Framing::batch(protocol);
    if framing.framed_len(messages) < min_size {
        return encode_data_frame(out, protocol, messages);
    }
    let mut payload = Vec::with_capacity(framing.framed_len(messages));
    framing.write(messages, &mut payload);
    let mut compressed = Vec::new();
    super::deflate::compress_message(&payload, level, &mut compressed);
    let mut head = [0u8; MAX_HEADER];
    let head_len = frame_header(&mut head, data_opcode(protocol), compressed.len());
    head[0] |= RSV1;
    out.reserve(head_len + compressed.len());
    out.extend_from_slice(&head[..head_len]);
    out.extend_from_slice(&compressed);
}

/// The header of a data frame whose payload is `len` bytes; returns its length.
pub fn data_header(out: &mut [u8; MAX_HEADER], protocol: ProtocolType, len: usize) -> usize {
    frame_header(out, data_opcode(protocol), len)
}

/// Appends one data frame carrying `messages` (see [`Framing::batch`]).
pub fn encode_data_frame(out: &mut Vec<u8>, protocol: ProtocolType, messages: &[Bytes]) {
    let framing = Framing::batch(protocol);
    let len = framing.framed_len(messages);
    let mut head = [0u8; MAX_HEADER];
    let head_len = data_header(&mut head, protocol, len);
    out.reserve(head_len + len);
    out.extend_from_slice(&head[..head_len]);
    framing.write(messages, out);
}

/// Appends a close frame with `code` and `reason` (cut to the 123 bytes a control frame
/// allows, at a character boundary).
pub fn encode_close_frame(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut head = [0u8; MAX_HEADER];
    let head_len = frame_header(&mut head, OPCODE_CLOSE, 2 + end);
    out.extend_from_slice(&head[..head_len]);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&reason.as_bytes()[..end]);
}

/// The close frame that answers a client's close: its code echoed, or no code.
pub fn close_answer(code: Option<u16>) -> Bytes {
    match code {
        Some(code) => {
            let mut frame = Vec::with_capacity(4);
            encode_close_frame(&mut frame, code, "");
            Bytes::from(frame)
        }
        None => Bytes::from_static(EMPTY_CLOSE_FRAME),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_headers_use_the_shortest_length_form() {
        let mut head = [0u8; MAX_HEADER];
        assert_eq!(frame_header(&mut head, OPCODE_TEXT, 125), 2);
        assert_eq!(&head[..2], &[0x81, 125]);
        assert_eq!(frame_header(&mut head, OPCODE_BINARY, 126), 4);
        assert_eq!(&head[..4], &[0x82, 126, 0, 126]);
        assert_eq!(frame_header(&mut head, OPCODE_BINARY, 65535), 4);
        assert_eq!(&head[..4], &[0x82, 126, 0xff, 0xff]);
        assert_eq!(frame_header(&mut head, OPCODE_TEXT, 65536), 10);
        assert_eq!(&head[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }

    #[test]
    fn data_frames_join_json_lines_and_concatenate_protobuf() {
        let messages = [Bytes::from_static(b"{\"a\":1}"), Bytes::from_static(b"{}")];
        let mut frame = Vec::new();
        encode_data_frame(&mut frame, ProtocolType::Json, &messages);
        assert_eq!(frame, b"\x81\x0a{\"a\":1}\n{}");
        frame.clear();
        encode_data_frame(
            &mut frame,
            ProtocolType::Protobuf,
            &[Bytes::from_static(&[1, 7]), Bytes::from_static(&[0])],
        );
        assert_eq!(frame, [0x82, 3, 1, 7, 0]);
    }

    #[test]
    fn close_reasons_are_cut_to_123_bytes_on_a_character_boundary() {
        let mut frame = Vec::new();
        encode_close_frame(&mut frame, 3008, &"é".repeat(100));
        // 2 + 122 bytes: 61 two-byte characters, the 62nd would pass 123.
        assert_eq!(frame[1] as usize, 2 + 122);
        assert_eq!(&frame[2..4], &3008u16.to_be_bytes());
        assert!(std::str::from_utf8(&frame[4..]).is_ok());
        assert_eq!(&close_answer(Some(1000))[..], &[0x88, 2, 0x03, 0xe8]);
        assert_eq!(&close_answer(None)[..], EMPTY_CLOSE_FRAME);
    }
}
