//! WebSocket permessage-deflate (RFC 7692), as Centrifugo's WebSocket library speaks it:
//! negotiated with no context takeover in either direction, so every message is compressed on
//! its own and any compressor can handle any message (the ones here are per thread, never per
//! connection: a deflate state is hundreds of kilobytes).
//!
//! * [`negotiate`] reads the client's `Sec-WebSocket-Extensions` offers;
//! * [`compress_message`] deflates an outgoing payload (the frame gets RSV1);
//! * [`Inflater`] sits between the socket and tungstenite, which knows no extensions: it turns
//!   the client's compressed messages back into plain frames and passes everything else
//!   through untouched. A message over its limit, compressed or inflated, becomes a frame
//!   header announcing a too-long frame, which tungstenite refuses as over capacity.
//!
//! No IO here: bytes in, bytes out.

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The extension's answer: compression with no context takeover either way.
pub const RESPONSE: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The four bytes a sync flush ends with: stripped from each sent message (RFC 7692 §7.2.1),
/// put back before inflating a received one.
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Whether one of the offers in `Sec-WebSocket-Extensions` values is a permessage-deflate we
/// can accept with [`RESPONSE`]. An offer limiting the server's window below 2^15 is not: the
/// compressor always uses the full window.
pub fn negotiate<'a>(headers: impl IntoIterator<Item = &'a str>) -> bool {
    headers.into_iter().flat_map(|value| value.split(',')).any(acceptable_offer)
}

fn acceptable_offer(offer: &str) -> bool {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next().is_some_and(|name| name.eq_ignore_ascii_case("permessage-deflate")) {
        return false;
    }
    parts.all(|param| {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (param, None),
        };
        match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" | "client_no_context_takeover" => value.is_none(),
            // We may leave the client's window as it is (by not answering the parameter).
            "client_max_window_bits" => value.is_none_or(|bits| matches!(bits.parse::<u8>(), Ok(8..=15))),
            "server_max_window_bits" => value == Some("15"),
            _ => false,
        }
    })
}

thread_local! {
    /// One compressor per level and thread (levels 0–9), made on first use.
    static COMPRESSORS: RefCell<Vec<Option<Compress>>> = RefCell::new((0..10).map(|_| None).collect());
    static DECOMPRESSOR: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// Appends `payload` deflated at `level` (clamped to 0–9) to `out`, without the sync tail.
pub fn compress_message(payload: &[u8], level: i32, out: &mut Vec<u8>) {
    let level = level.clamp(0, 9) as usize;
    COMPRESSORS.with(|compressors| {
        let mut compressors = compressors.borrow_mut();
        let compress =
            compressors[level].get_or_insert_with(|| Compress::new(Compression::new(level as u32), false));
        compress.reset();
        let start = out.len();
        let consumed_before = compress.total_in();
        loop {
            out.reserve(payload.len() / 2 + 64);
            let consumed = (compress.total_in() - consumed_before) as usize;
            compress
                .compress_vec(&payload[consumed..], out, FlushCompress::Sync)
                .expect("deflate of an in-memory buffer does not fail");
            let done = (compress.total_in() - consumed_before) as usize == payload.len();
            if done && out.len() > start + 4 && out.ends_with(&SYNC_TAIL) && out.len() < out.capacity() {
                break;
            }
        }
        out.truncate(out.len() - SYNC_TAIL.len());
    });
}

/// Inflates one received message (its frames' payloads joined), refusing to go past `limit`.
fn inflate_message(compressed: &mut Vec<u8>, limit: usize) -> Option<Vec<u8>> {
    compressed.extend_from_slice(&SYNC_TAIL);
    DECOMPRESSOR.with(|decompressor| {
        let mut decompress = decompressor.borrow_mut();
        decompress.reset(false);
        let mut out: Vec<u8> = Vec::new();
        loop {
            if out.len() == out.capacity() {
                // Room for at least one byte past the limit, so going over it shows.
                let room = (compressed.len() * 4).max(out.len()).max(64).min(limit + 1 - out.len());
                out.reserve_exact(room);
            }
            let (consumed, before) = (decompress.total_in() as usize, out.len());
            let status =
                decompress.decompress_vec(&compressed[consumed..], &mut out, FlushDecompress::Sync).ok()?;
            if out.len() > limit {
                return None;
            }
            if status == Status::StreamEnd {
                return Some(out);
            }
            let ate = decompress.total_in() as usize > consumed;
            if !ate && out.len() == before {
                // No progress with room to write: done when all input was taken, else corrupt.
                let input_done = decompress.total_in() as usize == compressed.len();
                return input_done.then_some(out);
            }
        }
    })
}

/// A client frame's header, parsed.
#[derive(Debug, Clone, Copy)]
struct Header {
    fin: bool,
    rsv1: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    len: u64,
}

/// Parses a frame header from the start of `buf`: `None` until it is complete.
fn parse_header(buf: &[u8]) -> Option<(Header, usize)> {
    let (&first, &second) = (buf.first()?, buf.get(1)?);
    let masked = second & 0x80 != 0;
    let (len, mut at) = match second & 0x7f {
        126 => (u64::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)), 4),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?), 10),
        short => (u64::from(short), 2),
    };
    let mask = if masked {
        let mask: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(mask)
    } else {
        None
    };
    let header = Header { fin: first & 0x80 != 0, rsv1: first & 0x40 != 0, opcode: first & 0x0f, mask, len };
    Some((header, at))
}

/// Appends a client-style frame (masked, with an all-zero key: the payload stays as it is).
fn write_plain_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    write_masked_header(out, 0x80 | opcode, payload.len() as u64);
    out.extend_from_slice(payload);
}

fn write_masked_header(out: &mut Vec<u8>, first: u8, len: u64) {
    out.push(first);
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u64::from(u16::MAX) {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    out.extend_from_slice(&[0; 4]);
}

/// Where the reader is in the client's byte stream.
#[derive(Debug)]
enum Position {
    /// Collecting a header.
    Header,
    /// Passing `remaining` payload bytes of an uncompressed frame through.
    PassThrough { remaining: u64 },
    /// Collecting `remaining` payload bytes of a compressed message's frame.
    Compressed { header: Header, remaining: u64, offset: u64 },
    /// A limit was passed: the too-long header has been emitted, nothing more is.
    Refused,
}

/// The inbound half of permessage-deflate for one connection.
#[derive(Debug)]
pub struct Inflater {
    /// Bytes of the compressed message, on the wire.
    wire_limit: usize,
    /// Bytes of a message once inflated.
    inflated_limit: usize,
    position: Position,
    header: Vec<u8>,
    /// The compressed message being received: its opcode and payload so far.
    message: Option<(u8, Vec<u8>)>,
    /// Bytes of the uncompressed message being passed through (tungstenite, which only sees
    /// inflated messages, is given the larger limit).
    plain_len: u64,
}

impl Inflater {
    pub fn new(wire_limit: usize, inflated_limit: usize) -> Self {
        Self {
            wire_limit,
            inflated_limit,
            position: Position::Header,
            header: Vec::new(),
            message: None,
            plain_len: 0,
        }
    }

    /// Takes bytes read from the client and appends what tungstenite should read to `out`.
    pub fn push(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            input = match self.position {
                Position::Refused => return,
                Position::Header => self.read_header(input, out),
                Position::PassThrough { remaining } => {
                    let take = remaining.min(input.len() as u64) as usize;
                    out.extend_from_slice(&input[..take]);
                    self.position = match remaining - take as u64 {
                        0 => Position::Header,
                        remaining => Position::PassThrough { remaining },
                    };
                    &input[take..]
                }
                Position::Compressed { header, remaining, offset } => {
                    self.read_compressed(input, header, remaining, offset, out)
                }
            };
        }
    }

    fn read_header<'a>(&mut self, input: &'a [u8], out: &mut Vec<u8>) -> &'a [u8] {
        // At most 14 header bytes are collected before parsing settles.
        let before = self.header.len();
        let take = (14 - before).min(input.len());
        self.header.extend_from_slice(&input[..take]);
        let Some((header, header_len)) = parse_header(&self.header) else {
            return &input[take..];
        };
        let rest = &input[header_len - before..];
        let starts_compressed = header.rsv1 && matches!(header.opcode, 0x1 | 0x2);
        let continues_compressed = header.opcode == 0x0 && self.message.is_some();
        if starts_compressed || continues_compressed {
            if starts_compressed {
                self.message = Some((header.opcode, Vec::new()));
            }
            self.header.clear();
            self.position = Position::Compressed { header, remaining: header.len, offset: 0 };
            if header.len == 0 {
                self.finish_frame(header, out);
            }
            return rest;
        }
        // Anything else (plain data, control frames, protocol errors) is tungstenite's.
        match header.opcode {
            0x1 | 0x2 => self.plain_len = header.len,
            0x0 => self.plain_len = self.plain_len.saturating_add(header.len),
            _ => {}
        }
        if self.plain_len > self.wire_limit as u64 {
            self.refuse(out);
            return &[];
        }
        out.extend_from_slice(&self.header[..header_len]);
        self.header.clear();
        self.position =
            if header.len == 0 { Position::Header } else { Position::PassThrough { remaining: header.len } };
        rest
    }

    fn read_compressed<'a>(
        &mut self,
        input: &'a [u8],
        header: Header,
        remaining: u64,
        offset: u64,
        out: &mut Vec<u8>,
    ) -> &'a [u8] {
        let take = remaining.min(input.len() as u64) as usize;
        let Some((_, message)) = self.message.as_mut() else { return &input[take..] };
        if message.len() + take > self.wire_limit {
            self.refuse(out);
            return &[];
        }
        let mask = header.mask.unwrap_or([0; 4]);
        message.extend(
            input[..take].iter().enumerate().map(|(i, byte)| byte ^ mask[((offset as usize) + i) % 4]),
        );
        let remaining = remaining - take as u64;
        self.position = Position::Compressed { header, remaining, offset: offset + take as u64 };
        if remaining == 0 {
            self.finish_frame(header, out);
        }
        &input[take..]
    }

    /// The end of a compressed message's frame: on the last one, the message is inflated and
    /// handed on as one plain frame.
    fn finish_frame(&mut self, header: Header, out: &mut Vec<u8>) {
        self.position = Position::Header;
        if !header.fin {
            return;
        }
        let Some((opcode, mut compressed)) = self.message.take() else { return };
        match inflate_message(&mut compressed, self.inflated_limit) {
            Some(inflated) => write_plain_frame(out, opcode, &inflated),
            None => self.refuse(out),
        }
    }

    /// Announces a frame longer than any limit, which tungstenite answers with a capacity
    /// error (the session ends as for any message over `message_size_limit`).
    fn refuse(&mut self, out: &mut Vec<u8>) {
        write_masked_header(out, 0x82, u64::MAX >> 1);
        self.position = Position::Refused;
        self.message = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut frame = vec![first];
        assert!(payload.len() < 126);
        frame.push(0x80 | payload.len() as u8);
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    fn parse_all(mut bytes: &[u8]) -> Vec<(u8, bool, Vec<u8>)> {
        let mut frames = Vec::new();
        while let Some((header, at)) = parse_header(bytes) {
            let end = at + header.len as usize;
            let mask = header.mask.unwrap_or([0; 4]);
            let payload = bytes[at..end].iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
            frames.push((header.opcode, header.fin, payload));
            bytes = &bytes[end..];
        }
        frames
    }

    #[test]
    fn offers_are_accepted_unless_they_shrink_our_window() {
        assert!(negotiate(["permessage-deflate; client_max_window_bits"]));
        assert!(negotiate(["x-webkit-deflate-frame, permessage-deflate"]));
        assert!(negotiate(["permessage-deflate; server_no_context_takeover; client_max_window_bits=10"]));
        assert!(negotiate(["permessage-deflate; server_max_window_bits=10", "permessage-deflate"]));
        assert!(!negotiate(["permessage-deflate; server_max_window_bits=10"]));
        assert!(!negotiate(["permessage-deflate; unknown_param"]));
        assert!(!negotiate(["x-webkit-deflate-frame"]));
        assert!(!negotiate([]));
    }

    #[test]
    fn compressed_messages_round_trip_through_the_inflater() {
        let text = br#"{"pub":{"data":{"text":"hello hello hello hello hello"}}}"#;
        let mut compressed = Vec::new();
        compress_message(text, 1, &mut compressed);
        assert!(compressed.len() < text.len());
        assert!(!compressed.ends_with(&SYNC_TAIL));

        // Sent as two fragments with a ping between them, fed one byte at a time.
        let (head, tail) = compressed.split_at(compressed.len() / 2);
        let mut wire = client_frame(0x40 | 0x1, head, [1, 2, 3, 4]);
        wire.extend(client_frame(0x80 | 0x9, b"p", [9, 9, 9, 9]));
        wire.extend(client_frame(0x80, tail, [5, 6, 7, 8]));
        wire.extend(client_frame(0x80 | 0x2, b"plain", [7, 7, 7, 7]));
        let mut inflater = Inflater::new(1024, 1024);
        let mut out = Vec::new();
        for byte in &wire {
            inflater.push(std::slice::from_ref(byte), &mut out);
        }
        let frames = parse_all(&out);
        assert_eq!(
            frames,
            vec![(0x9, true, b"p".to_vec()), (0x1, true, text.to_vec()), (0x2, true, b"plain".to_vec()),]
        );
    }

    #[test]
    fn an_inflated_message_over_its_limit_becomes_a_too_long_frame() {
        let zeros = vec![0u8; 100_000];
        let mut compressed = Vec::new();
        compress_message(&zeros, 9, &mut compressed);
        assert!(compressed.len() < 1000, "{}", compressed.len());
        let mut wire = vec![0x80 | 0x40 | 0x2, 0x80 | 126];
        wire.extend_from_slice(&(compressed.len() as u16).to_be_bytes());
        wire.extend_from_slice(&[0; 4]);
        wire.extend_from_slice(&compressed);
        let mut out = Vec::new();
        Inflater::new(65536, 65536).push(&wire, &mut out);
        let (header, _) = parse_header(&out).expect("a header");
        assert!(header.len > 1 << 40);

        // Within the limit, the same message comes through whole.
        let mut out = Vec::new();
        Inflater::new(65536, 100_000).push(&wire, &mut out);
        assert_eq!(parse_all(&out), vec![(0x2, true, zeros)]);
    }

    #[test]
    fn messages_over_the_wire_limit_are_refused_compressed_or_not() {
        let payload: Vec<u8> = (0..120).collect();
        for first in [0x40 | 0x2, 0x80 | 0x2] {
            let wire = client_frame(first, &payload, [0; 4]);
            let mut out = Vec::new();
            Inflater::new(100, 1 << 20).push(&wire, &mut out);
            assert!(parse_header(&out).expect("a header").0.len > 1 << 40);
        }
    }
}
