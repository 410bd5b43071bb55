//! S7 over the wire: the committed fuzz corpus (`tests/fuzz-corpus/`) replayed to a live
//! in-process server, twenty rounds. Each bad input gets its specified answer (1002 or 1007 for
//! frames that break RFC 6455, 1009 for a frame declaring 1 GiB, 3501 for commands that do not
//! decode, 400 from the HTTP API and the emulation endpoint), the server keeps serving, and the
//! process's memory stays flat.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use spinwire::node::Node;
use spinwire::server::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every file of `tests/fuzz-corpus/<target>/`, in name order (the corpus `fuzz.rs` mutates).
fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fuzz-corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).collect();
    files.sort();
    files.iter().map(|path| std::fs::read(path).unwrap()).collect()
}

async fn start() -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let file = json!({
        "http_server": {"address": "127.0.0.1", "port": 0},
        "client": {"token": {"hmac_secret_key": "replay"}},
        "http_api": {"key": "k"},
        "health": {"enabled": true},
        "http_stream": {"enabled": true},
        "channel": {"namespaces": [{"name": "chat", "allow_subscribe_for_client": true}]},
    });
    let config = spinwire::config::build(Some(file), &|_| None).unwrap().config;
    let server = Server::bind(Node::new(config).unwrap()).unwrap();
    let addr = server.http_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// Everything the server sends until it closes, sends a WebSocket close frame, or 3 s pass.
async fn answer(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 8192];
    while let Ok(Ok(read)) = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buffer)).await {
        if read == 0 {
            break;
        }
        received.extend_from_slice(&buffer[..read]);
        if close_code(&received).is_some() {
            break; // no need to wait out the server's closing handshake grace
        }
    }
    received
}

async fn websocket(addr: SocketAddr, subprotocol: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /connection/websocket HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{subprotocol}\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    stream
}

/// A masked client frame (any length) with a zero mask.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n < 65536 => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(payload);
    frame
}

/// The code of the first close frame the server sent, if any.
fn close_code(bytes: &[u8]) -> Option<u16> {
    let mut at = 0;
    while at + 2 <= bytes.len() {
        let (opcode, short) = (bytes[at] & 0x0f, (bytes[at + 1] & 0x7f) as usize);
        let (header, length) = match short {
            126 if at + 4 <= bytes.len() => (4, u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize),
            127 => return None,
            _ => (2, short),
        };
        if opcode == 0x8 && length >= 2 && at + header + 2 <= bytes.len() {
            return Some(u16::from_be_bytes([bytes[at + header], bytes[at + header + 1]]));
        }
        at += header + length;
    }
    None
}

async fn http(addr: SocketAddr, path: &str, body: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: k\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let answer = answer(&mut stream).await;
    String::from_utf8_lossy(&answer).split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0)
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// What each raw frame of the corpus must get: (file stem, close code), `None` for frames the
/// server may accept.
fn expected_close(name: &str) -> Option<u16> {
    match name {
        "unmasked" | "reserved_opcode" | "rsv_bits" | "fragmented_ping" | "long_ping"
        | "continuation_first" | "deflate_bit" | "bad_close_code" => Some(1002),
        "bad_utf8_text" => Some(1007),
        "one_gib_header" => Some(1009),
        _ => None,
    }
}

async fn replay_round(addr: SocketAddr) {
    let dir =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fuzz-corpus/websocket_frames");
    let mut names: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).collect();
    names.sort();
    for path in names {
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let mut ws = websocket(addr, "").await;
        ws.write_all(&std::fs::read(&path).unwrap()).await.unwrap();
        let got = close_code(&answer(&mut ws).await);
        if let Some(code) = expected_close(&stem) {
            assert_eq!(got, Some(code), "frame {stem}");
        }
    }
    for (target, subprotocol, opcode) in [
        ("json_commands", "", 1u8),
        ("protobuf_commands", "Sec-WebSocket-Protocol: centrifuge-protobuf\r\n", 2u8),
    ] {
        for input in corpus(target) {
            let mut ws = websocket(addr, subprotocol).await;
            ws.write_all(&client_frame(opcode, &input)).await.unwrap();
            let got = close_code(&answer(&mut ws).await);
            // Decoded commands get replies (then 3501 for a command before connect, or the
            // stale-connection close); undecodable ones 3501; bad UTF-8 text 1007.
            assert!(matches!(got, Some(1007 | 3501 | 3500 | 3502) | None), "{target}: {got:?} for {input:?}");
        }
    }
    for input in corpus("api") {
        let status = http(addr, "/api/publish", &input).await;
        assert!(matches!(status, 200 | 400), "api: {status} for {:?}", String::from_utf8_lossy(&input));
    }
    for input in corpus("emulation") {
        let status = http(addr, "/emulation", &input).await;
        assert!((400..500).contains(&status) || status == 204, "emulation: {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_corpus_over_the_wire_gets_its_answers_and_memory_stays_flat() {
    let (addr, _stop) = start().await;
    replay_round(addr).await; // warm-up: allocator pools, lazy statics
    let before = rss_kib();
    for _ in 0..20 {
        replay_round(addr).await;
    }
    let grown = rss_kib().saturating_sub(before);
    let health = http(addr, "/health", b"").await;
    assert!(matches!(health, 200 | 405), "still serving: /health {health}");
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB over 20 rounds");
    println!("# S7 replay: 20 rounds of the corpus, RSS grew {grown} KiB");
}
