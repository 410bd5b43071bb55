//! Cutting a byte stream into command frames, for transports that carry the protocol on a
//! stream rather than in messages (WebTransport). Sans-IO: bytes go in, frames come out, and
//! each frame is what [`super::decode_commands`] takes.
//!
//! JSON commands are `\n`-terminated lines; Protobuf ones are varint-length-delimited. A frame
//! holds every complete message received so far. A single message over the limit is refused
//! before it is buffered whole, so the buffer never exceeds the limit plus one read.

use bytes::{Bytes, BytesMut};

use super::ProtocolType;

/// Why a stream cannot be framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeframeError {
    #[error("message over the size limit")]
    TooBig,
    #[error("malformed length prefix")]
    Malformed,
}

/// Incremental framer for one inbound stream.
#[derive(Debug)]
pub struct Deframer {
    protocol: ProtocolType,
    limit: usize,
    buffer: BytesMut,
    /// JSON: bytes of `buffer` already known to hold no `\n`.
    scanned: usize,
}

impl Deframer {
    /// A framer refusing messages (JSON lines, Protobuf payloads) longer than `limit` bytes.
    pub fn new(protocol: ProtocolType, limit: usize) -> Self {
        Self { protocol, limit, buffer: BytesMut::new(), scanned: 0 }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        self.buffer.extend_from_slice(data);
    }

    /// Bytes held and not yet returned in a frame.
    pub fn pending(&self) -> usize {
        self.buffer.len()
    }

    /// The complete messages buffered so far as one frame, if there are any.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, DeframeError> {
        let end = match self.protocol {
            ProtocolType::Json => self.json_end()?,
            ProtocolType::Protobuf => self.protobuf_end()?,
        };
        if end == 0 {
            return Ok(None);
        }
        let frame = self.buffer.split_to(end).freeze();
        self.scanned = self.scanned.saturating_sub(end);
        // Blank JSON lines carry no command (Protobuf bytes that happen to be whitespace do).
        if self.protocol == ProtocolType::Json && frame.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        Ok(Some(frame))
    }

    /// End of the last complete line; every line, complete or not, must fit the limit.
    fn json_end(&mut self) -> Result<usize, DeframeError> {
        // Bytes before `scanned` hold no `\n`, so the first line starts at 0 either way.
        let mut line_start = 0;
        for (at, byte) in self.buffer.iter().enumerate().skip(self.scanned) {
            if *byte == b'\n' {
                if at - line_start > self.limit {
                    return Err(DeframeError::TooBig);
                }
                line_start = at + 1;
            }
        }
        if self.buffer.len() - line_start > self.limit {
            return Err(DeframeError::TooBig);
        }
        self.scanned = self.buffer.len();
        Ok(line_start)
    }

    /// End of the last complete delimited message.
    fn protobuf_end(&self) -> Result<usize, DeframeError> {
        let mut at = 0;
        while at < self.buffer.len() {
            let Some((length, prefix)) = varint(&self.buffer[at..])? else { break };
            if length > self.limit as u64 {
                return Err(DeframeError::TooBig);
            }
            let next = at + prefix + length as usize;
            if next > self.buffer.len() {
                break;
            }
            at = next;
        }
        Ok(at)
    }
}

/// A varint at the start of `buf`: its value and length, `None` while incomplete.
fn varint(buf: &[u8]) -> Result<Option<(u64, usize)>, DeframeError> {
    let mut value = 0u64;
    for (index, byte) in buf.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            return Ok(Some((value, index + 1)));
        }
    }
    if buf.len() >= 10 { Err(DeframeError::Malformed) } else { Ok(None) }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::proto::client::{Command, PingRequest};

    #[test]
    fn json_lines_split_anywhere_come_out_whole() {
        let mut framer = Deframer::new(ProtocolType::Json, 100);
        framer.push(b"{\"id\":1}\n{\"id\"");
        assert_eq!(framer.next_frame().unwrap().unwrap(), &b"{\"id\":1}\n"[..]);
        assert_eq!(framer.next_frame().unwrap(), None);
        framer.push(b":2}");
        assert_eq!(framer.next_frame().unwrap(), None);
        framer.push(b"\n\n{\"id\":3}\n");
        assert_eq!(framer.next_frame().unwrap().unwrap(), &b"{\"id\":2}\n\n{\"id\":3}\n"[..]);
        framer.push(b"\n");
        assert_eq!(framer.next_frame().unwrap(), None, "a blank line is not a frame");
        assert_eq!(framer.pending(), 0);
    }

    #[test]
    fn json_lines_over_the_limit_are_refused_complete_or_not() {
        let mut framer = Deframer::new(ProtocolType::Json, 8);
        framer.push(b"123456789");
        assert_eq!(framer.next_frame(), Err(DeframeError::TooBig));
        let mut framer = Deframer::new(ProtocolType::Json, 8);
        framer.push(b"12345678\n123456789\n");
        assert_eq!(framer.next_frame(), Err(DeframeError::TooBig));
        let mut framer = Deframer::new(ProtocolType::Json, 8);
        framer.push(b"12345678\n1234");
        assert_eq!(framer.next_frame().unwrap().unwrap(), &b"12345678\n"[..]);
        framer.push(b"56789");
        assert_eq!(framer.next_frame(), Err(DeframeError::TooBig));
    }

    #[test]
    fn protobuf_messages_split_anywhere_come_out_whole() {
        let command = Command { id: 7, ping: Some(PingRequest::default()), ..Default::default() };
        let one = command.encode_length_delimited_to_vec();
        let mut stream = one.clone();
        stream.extend_from_slice(&one);
        for cut in 0..stream.len() {
            let mut framer = Deframer::new(ProtocolType::Protobuf, 100);
            let mut frames = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                framer.push(part);
                if let Some(frame) = framer.next_frame().unwrap() {
                    frames.extend_from_slice(&frame);
                }
            }
            assert_eq!(frames, stream, "cut at {cut}");
            let mut decoded = Vec::new();
            crate::protocol::decode_commands(ProtocolType::Protobuf, &frames, &mut decoded).unwrap();
            assert_eq!(decoded, vec![command.clone(), command.clone()]);
        }
    }

    #[test]
    fn protobuf_lengths_over_the_limit_or_malformed_are_refused_early() {
        let mut framer = Deframer::new(ProtocolType::Protobuf, 100);
        framer.push(&[0x80, 0x08]); // 1024, with none of the payload yet
        assert_eq!(framer.next_frame(), Err(DeframeError::TooBig));
        let mut framer = Deframer::new(ProtocolType::Protobuf, 100);
        framer.push(&[0xff; 11]);
        assert_eq!(framer.next_frame(), Err(DeframeError::Malformed));
        let mut framer = Deframer::new(ProtocolType::Protobuf, 100);
        framer.push(&[0xff; 5]);
        assert_eq!(framer.next_frame(), Ok(None), "an unfinished prefix waits for more");
    }
}
