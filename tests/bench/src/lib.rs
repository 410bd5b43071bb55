//! Benchmark support: a lean client-side WebSocket, Centrifugo protocol frames, payloads that
//! carry a timestamp and a sequence number, and `/proc` readings of the server process.
//!
//! The load generator must cost much less than the server it measures, so the client side is
//! hand-rolled: frames are pre-encoded with a zero mask key (masking becomes a no-op), incoming
//! frames are parsed from one reusable buffer, and publications are recognised by scanning for
//! a marker instead of decoding JSON or Protobuf.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use bytes::{Buf, BytesMut};
use prost::Message as _;
use spinwire::proto::client::{Command, ConnectRequest, PublishRequest, SubscribeRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Framing spoken to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Json,
    Protobuf,
}

impl std::str::FromStr for Protocol {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "json" => Ok(Self::Json),
            "protobuf" => Ok(Self::Protobuf),
            other => bail!("unknown protocol {other:?} (json|protobuf)"),
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Json => "json",
            Self::Protobuf => "protobuf",
        })
    }
}

/// Opens a TCP connection and performs the WebSocket client handshake. Returns the stream and
/// any bytes that arrived after the handshake response.
pub async fn ws_connect(addr: &str, path: &str, protocol: Protocol) -> Result<(TcpStream, BytesMut)> {
    ws_connect_from(addr, None, path, protocol).await
}

/// [`ws_connect`] from a chosen local address (`source`, any port). Loopback is a /8: spreading
/// a connect storm over several 127.x addresses gives each its own ephemeral port range, so a
/// long run never reuses ports still in TIME_WAIT (which stalls a connect for the kernel's
/// retransmit, not the server's).
pub async fn ws_connect_from(
    addr: &str,
    source: Option<std::net::IpAddr>,
    path: &str,
    protocol: Protocol,
) -> Result<(TcpStream, BytesMut)> {
    let stream = match source {
        None => TcpStream::connect(addr).await.with_context(|| format!("connect {addr}"))?,
        Some(ip) => {
            let target: std::net::SocketAddr = addr.parse().with_context(|| format!("address {addr}"))?;
            let socket = if ip.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            socket.bind(std::net::SocketAddr::new(ip, 0))?;
            socket.connect(target).await.with_context(|| format!("connect {addr} from {ip}"))?
        }
    };
    stream.set_nodelay(true)?;
    ws_handshake(stream, addr, path, protocol).await
}

/// The client half of the WebSocket upgrade over an already connected stream.
pub async fn ws_handshake(
    mut stream: TcpStream,
    host: &str,
    path: &str,
    protocol: Protocol,
) -> Result<(TcpStream, BytesMut)> {
    let subprotocol = match protocol {
        Protocol::Json => "",
        Protocol::Protobuf => "Sec-WebSocket-Protocol: centrifuge-protobuf\r\n",
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{subprotocol}\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            bail!("connection closed during the WebSocket handshake");
        }
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            if !buf.starts_with(b"HTTP/1.1 101") {
                bail!("handshake refused: {}", String::from_utf8_lossy(&buf[..end]));
            }
            buf.advance(end + 4);
            return Ok((stream, buf));
        }
        if buf.len() > 8192 {
            bail!("oversized handshake response");
        }
    }
}

/// Appends a client frame (FIN, masked with an all-zero key so the payload is sent as is).
pub fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
}

/// One server frame: opcode and the payload range within the buffer.
#[derive(Debug, Clone, Copy)]
pub struct FrameHeader {
    pub opcode: u8,
    pub header_len: usize,
    pub payload_len: usize,
}

/// Parses a server (unmasked) frame header at the start of `buf`, if complete.
pub fn parse_frame(buf: &[u8]) -> Option<FrameHeader> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut header_len) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().ok()?) as usize, 10),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    if masked {
        header_len += 4;
    }
    (buf.len() >= header_len + len).then_some(FrameHeader { opcode, header_len, payload_len: len })
}

/// Frame opcodes used here.
pub mod opcode {
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// Opcode for data frames of a protocol.
pub fn data_opcode(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Json => opcode::TEXT,
        Protocol::Protobuf => opcode::BINARY,
    }
}

/// Encodes one client command in the connection's framing (as one frame payload).
pub fn encode_command(protocol: Protocol, command: &Command) -> Vec<u8> {
    match protocol {
        Protocol::Json => serde_json::to_vec(command).expect("commands serialize"),
        Protocol::Protobuf => command.encode_length_delimited_to_vec(),
    }
}

/// Connect + subscribe commands (ids 1 and 2…) in one frame payload.
pub fn setup_frame(protocol: Protocol, token: &str, channels: &[String]) -> Vec<u8> {
    let mut commands = vec![Command {
        id: 1,
        connect: Some(ConnectRequest { token: token.to_owned(), ..Default::default() }),
        ..Default::default()
    }];
    for (i, channel) in channels.iter().enumerate() {
        commands.push(Command {
            id: 2 + i as u32,
            subscribe: Some(SubscribeRequest { channel: channel.clone(), ..Default::default() }),
            ..Default::default()
        });
    }
    let mut payload = Vec::new();
    for (i, command) in commands.iter().enumerate() {
        if protocol == Protocol::Json && i > 0 {
            payload.push(b'\n');
        }
        payload.extend_from_slice(&encode_command(protocol, command));
    }
    payload
}

/// A client-side publish command.
pub fn publish_command(protocol: Protocol, id: u32, channel: &str, data: &[u8]) -> Vec<u8> {
    encode_command(
        protocol,
        &Command {
            id,
            publish: Some(PublishRequest {
                channel: channel.to_owned(),
                data: bytes::Bytes::copy_from_slice(data),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
}

/// Payload layout: a JSON string `"~T<20 digits>~S<12 digits>~C<6 digits>~<padding>"`. The same
/// bytes are valid JSON (for JSON clients) and opaque bytes (for Protobuf clients).
pub const MARKER: &[u8] = b"~T";
const TS_DIGITS: usize = 20;
const SEQ_DIGITS: usize = 12;
const CH_DIGITS: usize = 6;
/// Smallest payload that holds the header.
pub const MIN_PAYLOAD: usize = 2 + 2 + TS_DIGITS + 2 + SEQ_DIGITS + 2 + CH_DIGITS + 1;

/// Builds a payload of exactly `size` bytes (at least [`MIN_PAYLOAD`]).
pub fn make_payload(size: usize, ts_ns: u64, seq: u64, channel: u32) -> Vec<u8> {
    let mut out = format!("\"~T{ts_ns:020}~S{seq:012}~C{channel:06}~");
    while out.len() + 1 < size {
        out.push('x');
    }
    out.push('"');
    out.into_bytes()
}

/// A publication found in a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub ts_ns: u64,
    pub seq: u64,
    pub channel: u32,
}

fn digits(bytes: &[u8]) -> Option<u64> {
    bytes.iter().try_fold(0u64, |acc, b| b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0')))
}

/// Finds the payload stamp in a message, if it carries one.
pub fn find_stamp(message: &[u8]) -> Option<Stamp> {
    let at = message.windows(2).position(|w| w == MARKER)?;
    let rest = &message[at + 2..];
    if rest.len() < TS_DIGITS + 2 + SEQ_DIGITS + 2 + CH_DIGITS {
        return None;
    }
    let ts_ns = digits(&rest[..TS_DIGITS])?;
    let rest = &rest[TS_DIGITS + 2..];
    let seq = digits(&rest[..SEQ_DIGITS])?;
    let rest = &rest[SEQ_DIGITS + 2..];
    let channel = digits(&rest[..CH_DIGITS])? as u32;
    Some(Stamp { ts_ns, seq, channel })
}

/// Calls `each` with every protocol message in a data frame payload.
pub fn for_each_message(protocol: Protocol, payload: &[u8], mut each: impl FnMut(&[u8])) {
    match protocol {
        Protocol::Json => payload.split(|b| *b == b'\n').for_each(each),
        Protocol::Protobuf => {
            let mut rest = payload;
            while !rest.is_empty() {
                let mut cursor = rest;
                let Ok(len) = prost::encoding::decode_varint(&mut cursor) else { return };
                let len = len as usize;
                if len > cursor.len() {
                    return;
                }
                each(&cursor[..len]);
                rest = &cursor[len..];
            }
        }
    }
}

/// Whether a message is an application-level ping (an empty reply).
pub fn is_ping(protocol: Protocol, message: &[u8]) -> bool {
    match protocol {
        Protocol::Json => message == b"{}",
        Protocol::Protobuf => message.is_empty(),
    }
}

/// The pong frame payload of a protocol.
pub fn pong_payload(protocol: Protocol) -> &'static [u8] {
    match protocol {
        Protocol::Json => b"{}",
        Protocol::Protobuf => &[0],
    }
}

/// Whether a reply message carries an error (used to validate connect/subscribe).
pub fn is_error_reply(protocol: Protocol, message: &[u8]) -> bool {
    match protocol {
        Protocol::Json => message.windows(8).any(|w| w == b"\"error\":"),
        Protocol::Protobuf => {
            spinwire::proto::client::Reply::decode(message).map(|r| r.error.is_some()).unwrap_or(true)
        }
    }
}

/// Nanoseconds since a process-wide start instant (publisher and subscribers share it).
pub fn now_ns(start: Instant) -> u64 {
    start.elapsed().as_nanos() as u64
}

/// CPU seconds (user + system) used so far by a process, from `/proc/<pid>/stat`.
pub fn process_cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are at 11 and 12 after the name.
    let utime: f64 = fields.get(11).context("utime")?.parse()?;
    let stime: f64 = fields.get(12).context("stime")?.parse()?;
    Ok((utime + stime) / clock_ticks())
}

/// The CPU seconds some processes (summed) used over a span, from when it was started; there
/// is no figure without a pid, or once one of them is gone.
pub struct CpuSpan {
    pids: Vec<u32>,
    before: Option<f64>,
}

impl CpuSpan {
    /// `pids` may be an `Option<u32>` (a `--server-pid` that may be absent) or a list.
    pub fn start(pids: impl IntoIterator<Item = u32>) -> Self {
        let pids: Vec<u32> = pids.into_iter().collect();
        let before = Self::now(&pids);
        Self { pids, before }
    }

    /// CPU seconds used since [`CpuSpan::start`].
    pub fn elapsed(&self) -> Option<f64> {
        Some(Self::now(&self.pids)? - self.before?)
    }

    fn now(pids: &[u32]) -> Option<f64> {
        if pids.is_empty() {
            return None;
        }
        pids.iter().map(|&pid| process_cpu_seconds(pid).ok()).sum()
    }
}

fn clock_ticks() -> f64 {
    // USER_HZ is 100 on every Linux this runs on.
    100.0
}

/// Resident set size of a process in bytes, from `/proc/<pid>/status`.
pub fn process_rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("VmRSS")?;
    let kb: u64 = line.split_whitespace().nth(1).context("VmRSS value")?.parse()?;
    Ok(kb * 1024)
}

/// Kernel slab memory in use (bytes), from `/proc/meminfo` (`Slab:`), for the socket cost.
pub fn slab_bytes() -> Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let line = meminfo.lines().find(|l| l.starts_with("Slab:")).context("Slab")?;
    let kb: u64 = line.split_whitespace().nth(1).context("Slab value")?.parse()?;
    Ok(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trip() {
        let payload = make_payload(128, 123_456_789, 42, 7);
        assert_eq!(payload.len(), 128);
        assert!(serde_json::from_slice::<String>(&payload).is_ok(), "payload is a JSON string");
        assert_eq!(find_stamp(&payload), Some(Stamp { ts_ns: 123_456_789, seq: 42, channel: 7 }));
        let json_push = [br#"{"push":{"channel":"c","pub":{"data":"#.as_slice(), &payload, b"}}}"].concat();
        assert_eq!(find_stamp(&json_push).unwrap().seq, 42);
    }

    #[test]
    fn frames_round_trip() {
        let mut out = Vec::new();
        encode_frame(&mut out, opcode::TEXT, &[b'a'; 300]);
        assert_eq!(out[1] & 0x7f, 126);
        // Our client frames are masked; the parser also handles that.
        let header = parse_frame(&out).unwrap();
        assert_eq!((header.opcode, header.header_len, header.payload_len), (1, 8, 300));
        assert!(parse_frame(&out[..100]).is_none());
    }

    #[test]
    fn protobuf_messages_split() {
        let mut payload = Vec::new();
        payload.push(0); // ping
        payload.push(3);
        payload.extend_from_slice(b"abc");
        let mut seen = Vec::new();
        for_each_message(Protocol::Protobuf, &payload, |m| seen.push(m.to_vec()));
        assert_eq!(seen, vec![b"".to_vec(), b"abc".to_vec()]);
        assert!(is_ping(Protocol::Protobuf, &seen[0]));
    }
}
