//! Socket-level hardening over real sockets on 127.0.0.1: clients that never speak or trickle
//! their headers are closed at `header_read_timeout` on every listener, oversized or
//! over-numerous headers get 431, and connections over `max_connections` /
//! `max_connections_per_ip` are refused (503 on plain HTTP, closed on gRPC).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use spinwire::config;
use spinwire::node::Node;
use spinwire::server::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Running {
    http: SocketAddr,
    grpc_api: Option<SocketAddr>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(extra: Value) -> Running {
    let mut file = json!({
        "http_server": {"address": "127.0.0.1", "port": 0, "header_read_timeout": "400ms"},
        "client": {"token": {"hmac_secret_key": "hardening-secret"}},
        "http_api": {"key": "k"},
        "health": {"enabled": true},
    });
    merge(&mut file, extra);
    let config = config::build(Some(file), &|_| None).unwrap().config;
    let server = Server::bind(Node::new(config).unwrap()).unwrap();
    let (http, grpc_api) = (server.http_addr(), server.grpc_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    Running { http, grpc_api, _stop: stop }
}

fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(base), Value::Object(extra)) => {
            for (key, value) in extra {
                merge(base.entry(key).or_insert(Value::Null), value);
            }
        }
        (base, extra) => *base = extra,
    }
}

/// Reads until the server closes (or `within` passes): what it sent, and when it closed.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (Vec<u8>, Option<Duration>) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + within).into(), stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (received, Some(started.elapsed())),
            Ok(Ok(read)) => received.extend_from_slice(&buffer[..read]),
            Err(_) => return (received, None),
        }
    }
}

#[tokio::test]
async fn a_silent_socket_is_closed_at_the_header_deadline_on_every_listener() {
    let running = start(json!({"grpc_api": {"enabled": true, "port": 0, "key": "k"}})).await;
    for addr in [running.http, running.grpc_api.unwrap()] {
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let (_, closed) = read_until_closed(&mut silent, Duration::from_secs(5)).await;
        let closed = closed.unwrap_or_else(|| panic!("{addr}: a silent socket stayed open"));
        assert!(closed >= Duration::from_millis(300), "{addr}: closed too early ({closed:?})");
    }
}

#[tokio::test]
async fn trickled_headers_are_cut_off_at_the_deadline() {
    let running = start(json!({})).await;
    let mut slow = TcpStream::connect(running.http).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = Instant::now();
    // One header byte every 50 ms, never finishing: the connection must not outlive the deadline.
    let closed = loop {
        if slow.write_all(b"X").await.is_err() {
            break started.elapsed();
        }
        let mut byte = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(50), slow.read(&mut byte)).await
        {
            break started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(5), "a trickling client kept its connection");
    };
    assert!(closed < Duration::from_secs(2), "{closed:?}");
}

#[tokio::test]
async fn too_many_or_too_large_headers_get_431() {
    let running = start(json!({})).await;
    let many: String = (0..2000).map(|i| format!("X-H{i}: v\r\n")).collect();
    let large = format!("X-Big: {}\r\n", "a".repeat(1 << 20));
    for headers in [many, large] {
        let mut client = TcpStream::connect(running.http).await.unwrap();
        let request = format!("GET /health HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
        let _ = client.write_all(request.as_bytes()).await; // the server may stop reading early
        let (answer, closed) = read_until_closed(&mut client, Duration::from_secs(5)).await;
        assert!(closed.is_some(), "the connection is closed after the refusal");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    }
}

#[tokio::test]
async fn connections_over_the_caps_are_refused_and_others_still_served() {
    let running =
        start(json!({"http_server": {"max_connections_per_ip": 2, "header_read_timeout": "5s"}})).await;
    let held =
        [TcpStream::connect(running.http).await.unwrap(), TcpStream::connect(running.http).await.unwrap()];
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = TcpStream::connect(running.http).await.unwrap();
    let (answer, closed) = read_until_closed(&mut third, Duration::from_secs(2)).await;
    assert!(closed.is_some());
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 503"), "{answer:?}");
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fourth = TcpStream::connect(running.http).await.unwrap();
    fourth.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let (answer, _) = read_until_closed(&mut fourth, Duration::from_secs(2)).await;
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "freed places are reused: {:?}",
        String::from_utf8_lossy(&answer)
    );

    let capped = start(json!({"http_server": {"max_connections": 1, "header_read_timeout": "5s"},
        "grpc_api": {"enabled": true, "port": 0, "key": "k"}}))
    .await;
    let _only = TcpStream::connect(capped.http).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut grpc = TcpStream::connect(capped.grpc_api.unwrap()).await.unwrap();
    let (answer, closed) = read_until_closed(&mut grpc, Duration::from_secs(2)).await;
    assert!(closed.is_some() && answer.is_empty(), "gRPC sockets over the cap are closed at once");
}

async fn handshake(addr: SocketAddr, path: &str, key: &str) -> String {
    let mut client = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    );
    client.write_all(request.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 512];
    let read = tokio::time::timeout(Duration::from_secs(3), client.read(&mut answer)).await.unwrap().unwrap();
    String::from_utf8_lossy(&answer[..read]).into_owned()
}

#[tokio::test]
async fn a_websocket_key_that_is_not_a_16_byte_nonce_is_refused() {
    let running = start(json!({})).await;
    let ok = handshake(running.http, "/connection/websocket", "dGhlIHNhbXBsZSBub25jZQ==").await;
    assert!(ok.starts_with("HTTP/1.1 101"), "{ok}");
    for bad in ["x", "dGhlIHNhbXBsZQ==", "!!!!!!!!!!!!!!!!!!!!!!!!"] {
        let answer = handshake(running.http, "/connection/websocket", bad).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{bad}: {answer}");
    }
}

/// A masked client frame (RFC 6455 §5.3) with the mask all zeros.
fn client_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut frame = vec![first_byte, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(payload);
    frame
}

/// The close code of the first close frame in `bytes` (server frames are not masked).
fn close_code(bytes: &[u8]) -> Option<u16> {
    let mut at = 0;
    while at + 2 <= bytes.len() {
        let (opcode, length) = (bytes[at] & 0x0f, (bytes[at + 1] & 0x7f) as usize);
        let (header, length) = match length {
            126 => (4, u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize),
            _ => (2, length),
        };
        if opcode == 0x8 && length >= 2 {
            return Some(u16::from_be_bytes([bytes[at + header], bytes[at + header + 1]]));
        }
        at += header + length;
    }
    None
}

#[tokio::test]
async fn protocol_errors_are_answered_with_1002_and_bad_text_with_1007() {
    let running = start(json!({})).await;
    let cases: [(&[u8], u16); 3] = [
        (&client_frame(0x81, &[0xff, 0xfe, b'{', b'}']), 1007), // text that is not UTF-8
        (&client_frame(0x83, b"{}"), 1002),                     // a reserved opcode
        (&[0x81, 0x02, b'{', b'}'], 1002),                      // an unmasked client frame
    ];
    for (frame, code) in cases {
        let mut client = TcpStream::connect(running.http).await.unwrap();
        let request = "GET /connection/websocket HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
            Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        client.write_all(request.as_bytes()).await.unwrap();
        let mut upgrade = [0u8; 256];
        let read = client.read(&mut upgrade).await.unwrap();
        let upgrade = String::from_utf8_lossy(&upgrade[..read]);
        assert!(upgrade.starts_with("HTTP/1.1 101") && upgrade.ends_with("\r\n\r\n"), "{upgrade}");
        client.write_all(frame).await.unwrap();
        let (answer, closed) = read_until_closed(&mut client, Duration::from_secs(3)).await;
        assert!(closed.is_some(), "closed after the error");
        assert_eq!(close_code(&answer), Some(code), "{frame:?}: {answer:?}");
    }
}

async fn native_ping_client(addr: SocketAddr) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let url = format!("ws://{addr}/connection/websocket?cf_ws_frame_ping_pong=true");
    let stream = TcpStream::connect(addr).await.unwrap();
    tokio_tungstenite::client_async(url, stream).await.unwrap().0
}

#[tokio::test]
async fn native_pings_need_pongs_within_the_pong_timeout() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let running = start(json!({"client": {"ping_interval": "1s", "pong_timeout": "500ms"}})).await;
    let mut ws = native_ping_client(running.http).await;
    let token = spinwire::auth::mint_hs256("hardening-secret", &json!({"sub": "u1"}));
    ws.send(Message::text(json!({"id": 1, "connect": {"token": token}}).to_string())).await.unwrap();
    let reply = ws.next().await.unwrap().unwrap();
    assert!(reply.to_text().unwrap().contains("\"connect\""), "{reply:?}");
    // Not reading means not answering the server's pings (tungstenite answers while reading).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut close = None;
    while let Some(Ok(message)) = ws.next().await {
        if let Message::Close(frame) = message {
            close = frame.map(|f| u16::from(f.code));
            break;
        }
    }
    assert_eq!(close, Some(3012));

    // A client that reads (and so answers every ping) stays connected.
    let mut ws = native_ping_client(running.http).await;
    let token = spinwire::auth::mint_hs256("hardening-secret", &json!({"sub": "u2"}));
    ws.send(Message::text(json!({"id": 1, "connect": {"token": token}}).to_string())).await.unwrap();
    let quiet = tokio::time::timeout(Duration::from_millis(2500), async {
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Close(frame) = message {
                return frame;
            }
        }
        None
    })
    .await;
    assert!(quiet.is_err(), "a client answering pings was closed: {quiet:?}");
}

#[tokio::test]
async fn uni_http_transports_refuse_origins_not_allowed() {
    let running = start(json!({
        "uni_sse": {"enabled": true}, "uni_http_stream": {"enabled": true},
        "client": {"allowed_origins": ["https://app.example"]},
    }))
    .await;
    for (method, path) in [("GET", "/connection/uni_sse"), ("POST", "/connection/uni_http_stream")] {
        for (origin, refused) in [("https://evil.example", true), ("https://app.example", false)] {
            let mut client = TcpStream::connect(running.http).await.unwrap();
            let request = format!(
                "{method} {path} HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\nContent-Length: 2\r\n\
                 Connection: close\r\n\r\n{{}}"
            );
            client.write_all(request.as_bytes()).await.unwrap();
            let mut answer = [0u8; 64];
            let read = tokio::time::timeout(Duration::from_secs(3), client.read(&mut answer))
                .await
                .unwrap()
                .unwrap();
            let status = String::from_utf8_lossy(&answer[..read]);
            assert_eq!(status.starts_with("HTTP/1.1 403"), refused, "{path} from {origin}: {status}");
        }
    }
}

async fn api_call(addr: SocketAddr, method: &str, body: Value) -> Value {
    let body = body.to_string();
    let mut client = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST /api/{method} HTTP/1.1\r\nHost: x\r\nX-API-Key: k\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    client.write_all(request.as_bytes()).await.unwrap();
    let (answer, _) = read_until_closed(&mut client, Duration::from_secs(3)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (_, json) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    serde_json::from_str(json).unwrap_or_else(|_| panic!("{answer}"))
}

#[tokio::test]
async fn a_namespace_caps_publication_size_on_every_publish_path() {
    let running = start(json!({"channel": {"namespaces": [
        {"name": "small", "max_publication_size": 16, "history_size": 10, "history_ttl": "60s"},
        {"name": "smallmap", "max_publication_size": 16, "subscription_type": "map", "map": {"mode": "persistent"}},
    ]}}))
    .await;
    let fits = json!({"n": 1234567});
    let too_big = json!({"n": "a string longer than sixteen bytes"});
    let ok = api_call(running.http, "publish", json!({"channel": "small:a", "data": fits})).await;
    assert!(ok.get("error").is_none(), "{ok}");
    let refused = api_call(running.http, "publish", json!({"channel": "small:a", "data": too_big})).await;
    assert_eq!(refused["error"]["code"], 107, "{refused}");
    let broadcast =
        api_call(running.http, "broadcast", json!({"channels": ["small:b"], "data": too_big})).await;
    assert_eq!(broadcast["result"]["responses"][0]["error"]["code"], 107, "{broadcast}");
    let map =
        api_call(running.http, "map_publish", json!({"channel": "smallmap:m", "key": "k", "data": too_big}))
            .await;
    assert_eq!(map["error"]["code"], 107, "{map}");
    let other = api_call(running.http, "publish", json!({"channel": "elsewhere", "data": too_big})).await;
    assert!(other.get("error").is_none(), "other namespaces keep no limit: {other}");
}

/// R4: a subscriber whose socket stops being read is closed with 3008 once its queue passes
/// `client.queue_max_size`, while a reading subscriber of the same channel gets everything.
#[tokio::test]
async fn a_stalled_reader_is_closed_as_slow_and_the_others_get_everything() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let running = start(json!({
        "client": {"queue_max_size": 262_144},
        "channel": {"namespaces": [{"name": "feed", "allow_subscribe_for_client": true}]},
    }))
    .await;
    let subscribe = |user: &'static str| async move {
        let url = format!("ws://{}/connection/websocket", running.http);
        let stream = TcpStream::connect(running.http).await.unwrap();
        let _ = stream.set_nodelay(true);
        let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
        let token = spinwire::auth::mint_hs256("hardening-secret", &json!({"sub": user}));
        ws.send(Message::text(json!({"id": 1, "connect": {"token": token}}).to_string())).await.unwrap();
        ws.send(Message::text(json!({"id": 2, "subscribe": {"channel": "feed:x"}}).to_string()))
            .await
            .unwrap();
        let mut replies = 0;
        while replies < 2 {
            let reply = ws.next().await.unwrap().unwrap();
            replies += reply.to_text().unwrap().lines().count();
        }
        ws
    };
    let mut reader = subscribe("reader").await;
    let stalled = subscribe("stalled").await;
    let payload = "x".repeat(8000);
    let total = 1500; // 12 MB: more than the socket buffers and the queue together
    let publisher = tokio::spawn(async move {
        for n in 0..total {
            let reply = api_call(
                running.http,
                "publish",
                json!({"channel": "feed:x", "data": {"n": n, "p": payload}}),
            )
            .await;
            assert!(reply.get("error").is_none(), "{reply}");
        }
    });
    let mut received = 0;
    while received < total {
        let message =
            tokio::time::timeout(Duration::from_secs(30), reader.next()).await.unwrap().unwrap().unwrap();
        received += message.to_text().unwrap().lines().filter(|line| line.contains("\"pub\"")).count();
    }
    publisher.await.unwrap();
    assert_eq!(received, total, "the reading subscriber got every publication");
    // The stalled one, read at last: some publications, then a close with 3008.
    let mut stalled = stalled;
    let mut close = None;
    while let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(10), stalled.next()).await {
        if let Message::Close(frame) = message {
            close = frame.map(|f| u16::from(f.code));
            break;
        }
    }
    assert_eq!(close, Some(3008), "the stalled subscriber was closed as slow");
}

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count())
}

/// S6: thousands of half-open sockets (connected, never a byte) are all reaped at the header
/// deadline, and a well-behaved client is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_half_open_sockets_are_reaped_at_the_deadline() {
    const SOCKETS: usize = 3000; // client and server ends share this process's descriptors
    let running = start(json!({"http_server": {"header_read_timeout": "1s"}})).await;
    let baseline = open_descriptors();
    let mut silent = Vec::with_capacity(SOCKETS);
    for _ in 0..SOCKETS {
        silent.push(TcpStream::connect(running.http).await.unwrap());
    }
    let mut healthy = TcpStream::connect(running.http).await.unwrap();
    healthy.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let (answer, _) = read_until_closed(&mut healthy, Duration::from_secs(3)).await;
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"), "served among the half-open");
    // Every server end closes at the deadline; each client end then reads EOF.
    let started = Instant::now();
    for socket in &mut silent {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut byte)).await;
        assert!(matches!(read, Ok(Ok(0) | Err(_))), "a half-open socket was kept");
    }
    let reaped_within = started.elapsed();
    drop(silent);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(open_descriptors() <= baseline + 10, "descriptors back to {baseline}: {}", open_descriptors());
    println!("# S6: {SOCKETS} half-open sockets reaped {reaped_within:?} after the last was opened");
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// S5: one client sends thousands of messages just under the 64 KiB limit; each is handled and
/// answered, memory stays flat, and another client is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_large_messages_leaves_memory_flat() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    const MESSAGES: usize = 2000; // by hand: SPINWIRE_S5_MESSAGES=10000
    let messages =
        std::env::var("SPINWIRE_S5_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(MESSAGES);
    let running = start(json!({"channel": {"namespaces": [
        {"name": "big", "allow_subscribe_for_client": true, "allow_publish_for_client": true}
    ]}}))
    .await;
    let connect = |user: &'static str| async move {
        let stream = TcpStream::connect(running.http).await.unwrap();
        let url = format!("ws://{}/connection/websocket", running.http);
        let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
        let token = spinwire::auth::mint_hs256("hardening-secret", &json!({"sub": user}));
        ws.send(Message::text(json!({"id": 1, "connect": {"token": token}}).to_string())).await.unwrap();
        ws.next().await.unwrap().unwrap();
        ws
    };
    let (flooder, mut other) = (connect("flooder").await, connect("other").await);
    let payload = "x".repeat(65_536 - 100);
    let before = rss_kib();
    let started = Instant::now();
    let (mut sink, mut replies) = flooder.split();
    let sender = tokio::spawn(async move {
        for id in 0..messages {
            let command =
                json!({"id": id + 2, "publish": {"channel": "big:x", "data": {"p": payload}}}).to_string();
            sink.send(Message::text(command)).await.unwrap();
        }
        sink
    });
    // Meanwhile the other client's commands are answered promptly.
    other
        .send(Message::text(json!({"id": 2, "presence_stats": {"channel": "big:x"}}).to_string()))
        .await
        .unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(2), other.next()).await;
    assert!(matches!(answered, Ok(Some(Ok(_)))), "the other client waited: {answered:?}");
    let mut answers = 0;
    while answers < messages {
        let reply =
            tokio::time::timeout(Duration::from_secs(30), replies.next()).await.unwrap().unwrap().unwrap();
        answers += reply.to_text().unwrap().lines().count();
    }
    let _ = sender.await.unwrap().reunite(replies);
    let grown = rss_kib().saturating_sub(before);
    println!("# S5: {messages} × 64 KiB messages answered in {:?}; RSS grew {grown} KiB", started.elapsed());
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
}
