//! State-sync benchmarks, run against Spinwire and Centrifugo alike (same wire protocol):
//!
//! * `delta` — bytes on the wire for fossil delta subscribers against plain ones, for a JSON
//!   document of `--doc-bytes` (4 KB) that changes by about 1 % per publication. Every
//!   subscriber rebuilds each publication (applying the patches) and checks it against what was
//!   published; the run fails on any mismatch.
//! * `map` — `--keys` (10k) keys published into a map channel, then `--subs` (1k) subscribers
//!   page through its state (`--page` keys per page) until live; the time until every one is
//!   live and the server CPU it took.
//!
//! Subscribers speak Protobuf over raw WebSockets (see the crate's lib); publishing goes through
//! the HTTP API. Prints one JSON line of results.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::{Buf, BytesMut};
use prost::Message as _;
use serde_json::json;
use spinwire::proto::client::{Command, ConnectRequest, Reply, SubscribeRequest};
use spinwire_bench::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::{LocalSet, spawn_local};

const PROTOCOL: Protocol = Protocol::Protobuf;
/// `SubscribeRequest.type` of a map subscription, and the STATE phase.
const MAP_TYPE: i32 = 1;
const STATE_PHASE: i32 = 2;

#[derive(Debug, Clone)]
struct Opts {
    addr: String,
    secret: String,
    api_key: String,
    server_pid: Option<u32>,
    subs: usize,
    publications: usize,
    doc_bytes: usize,
    keys: usize,
    page: i32,
    connect_batch: usize,
}

fn parse_opts(args: &[String]) -> Result<Opts> {
    let mut map = std::collections::HashMap::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let key = arg.strip_prefix("--").with_context(|| format!("unexpected argument {arg:?}"))?;
        map.insert(key.to_owned(), iter.next().with_context(|| format!("--{key} needs a value"))?.clone());
    }
    let get = |key: &str, default: &str| map.get(key).cloned().unwrap_or_else(|| default.to_owned());
    Ok(Opts {
        addr: get("addr", "127.0.0.1:8000"),
        secret: get("secret", "bench-secret"),
        api_key: get("api-key", "bench-key"),
        server_pid: map.get("server-pid").map(|p| p.parse()).transpose()?,
        subs: get("subs", "100").parse()?,
        publications: get("publications", "500").parse()?,
        doc_bytes: get("doc-bytes", "4096").parse()?,
        keys: get("keys", "10000").parse()?,
        page: get("page", "1000").parse()?,
        connect_batch: get("connect-batch", "200").parse()?,
    })
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let Some(scenario) = args.get(1).cloned() else {
        bail!("usage: sync_bench <delta|map> [--options]");
    };
    let opts = parse_opts(&args[2..])?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = LocalSet::new().block_on(&runtime, async move {
        match scenario.as_str() {
            "delta" => delta(opts).await,
            "map" => map(opts).await,
            other => bail!("unknown scenario {other:?}"),
        }
    })?;
    println!("{result}");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// A subscriber connection
// ---------------------------------------------------------------------------------------

/// One Protobuf WebSocket client: sends commands, hands back replies (pings answered here).
struct Client {
    stream: TcpStream,
    buf: BytesMut,
    /// Bytes read from the socket so far (frame headers included).
    wire_bytes: u64,
    replies: std::collections::VecDeque<Reply>,
}

impl Client {
    async fn open(addr: &str) -> Result<Self> {
        let (stream, buf) = ws_connect(addr, "/connection/websocket", PROTOCOL).await?;
        Ok(Self { stream, buf, wire_bytes: 0, replies: Default::default() })
    }

    async fn send(&mut self, commands: &[Command]) -> Result<()> {
        let mut payload = Vec::new();
        for command in commands {
            payload.extend_from_slice(&encode_command(PROTOCOL, command));
        }
        let mut frame = Vec::new();
        encode_frame(&mut frame, data_opcode(PROTOCOL), &payload);
        self.stream.write_all(&frame).await?;
        Ok(())
    }

    /// The next reply or push (pings are answered and skipped).
    async fn next(&mut self) -> Result<Reply> {
        loop {
            if let Some(reply) = self.replies.pop_front() {
                return Ok(reply);
            }
            if let Some(frame) = parse_frame(&self.buf) {
                let payload = self.buf[frame.header_len..frame.header_len + frame.payload_len].to_vec();
                self.buf.advance(frame.header_len + frame.payload_len);
                match frame.opcode {
                    opcode::BINARY => self.queue_messages(&payload).await?,
                    opcode::CLOSE => bail!("closed by the server: {:?}", String::from_utf8_lossy(&payload)),
                    _ => {}
                }
                continue;
            }
            let read = self.stream.read_buf(&mut self.buf).await?;
            if read == 0 {
                bail!("connection closed");
            }
            self.wire_bytes += read as u64;
        }
    }

    async fn queue_messages(&mut self, payload: &[u8]) -> Result<()> {
        let mut messages = Vec::new();
        for_each_message(PROTOCOL, payload, |message| messages.push(message.to_vec()));
        for message in messages {
            if is_ping(PROTOCOL, &message) {
                let mut pong = Vec::new();
                encode_frame(&mut pong, data_opcode(PROTOCOL), pong_payload(PROTOCOL));
                self.stream.write_all(&pong).await?;
                continue;
            }
            self.replies.push_back(Reply::decode(message.as_slice()).context("reply")?);
        }
        Ok(())
    }

    /// Sends one command and waits for its reply (pushes before it are dropped).
    async fn call(&mut self, command: Command) -> Result<Reply> {
        let id = command.id;
        self.send(&[command]).await?;
        loop {
            let reply = self.next().await?;
            if reply.id == id {
                if let Some(error) = &reply.error {
                    bail!("command {id}: error {} {}", error.code, error.message);
                }
                return Ok(reply);
            }
        }
    }

    async fn connect(&mut self, secret: &str, user: &str) -> Result<()> {
        let token = spinwire::auth::mint_hs256(secret, &json!({"sub": user}));
        let connect = ConnectRequest { token, ..Default::default() };
        self.call(Command { id: 1, connect: Some(connect), ..Default::default() }).await?;
        Ok(())
    }
}

/// HTTP API calls over one keep-alive connection.
struct Api {
    stream: TcpStream,
    buf: BytesMut,
    addr: String,
    key: String,
}

impl Api {
    async fn open(addr: &str, key: &str) -> Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self { stream, buf: BytesMut::new(), addr: addr.to_owned(), key: key.to_owned() })
    }

    async fn call(&mut self, method: &str, body: &serde_json::Value) -> Result<serde_json::Value> {
        let body = body.to_string();
        let request = format!(
            "POST /api/{method} HTTP/1.1\r\nHost: {}\r\nX-API-Key: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            self.key,
            body.len()
        );
        self.stream.write_all(request.as_bytes()).await?;
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end])?.to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse())
                    .transpose()?
                    .unwrap_or(0);
                if self.buf.len() >= end + 4 + len {
                    let answer: serde_json::Value =
                        serde_json::from_slice(&self.buf[end + 4..end + 4 + len])?;
                    self.buf.advance(end + 4 + len);
                    if !head.starts_with("http/1.1 200") || answer.get("error").is_some() {
                        bail!("API {method}: {head:?} {answer}");
                    }
                    return Ok(answer);
                }
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                bail!("API connection closed");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// delta
// ---------------------------------------------------------------------------------------

/// The document as the publisher changes it: 80 string fields of equal width, one of which is
/// rewritten per publication (≈ 1 % of the bytes).
struct Document {
    values: Vec<String>,
    width: usize,
    state: u64,
}

impl Document {
    fn new(bytes: usize) -> Self {
        let fields = 80;
        // `"fNN":"…",` costs 9 bytes besides the value.
        let width = (bytes / fields).saturating_sub(9).max(4);
        let mut document = Self { values: Vec::new(), width, state: 0x9e37_79b9_7f4a_7c15 };
        document.values = (0..fields).map(|_| document.random_value()).collect();
        document
    }

    fn random_value(&mut self) -> String {
        (0..self.width)
            .map(|_| {
                self.state ^= self.state << 13;
                self.state ^= self.state >> 7;
                self.state ^= self.state << 17;
                char::from(b'a' + (self.state % 26) as u8)
            })
            .collect()
    }

    fn change(&mut self, n: usize) {
        let field = n * 37 % self.values.len();
        self.values[field] = self.random_value();
    }

    fn json(&self) -> serde_json::Value {
        let fields: serde_json::Map<String, serde_json::Value> =
            self.values.iter().enumerate().map(|(i, v)| (format!("f{i:02}"), json!(v))).collect();
        serde_json::Value::Object(fields)
    }
}

/// What one subscriber saw.
#[derive(Debug, Default, Clone)]
struct Received {
    publications: usize,
    deltas: usize,
    wire_bytes: u64,
    /// The publications rebuilt, in order (checked against the published ones).
    documents: Vec<Vec<u8>>,
}

async fn delta_subscriber(opts: Opts, user: String, channel: String, delta: bool) -> Result<Received> {
    let mut client = Client::open(&opts.addr).await?;
    client.connect(&opts.secret, &user).await?;
    let subscribe = SubscribeRequest {
        channel: channel.clone(),
        delta: if delta { "fossil".into() } else { String::new() },
        ..Default::default()
    };
    let reply = client.call(Command { id: 2, subscribe: Some(subscribe), ..Default::default() }).await?;
    if delta && !reply.subscribe.as_ref().is_some_and(|s| s.delta) {
        bail!("the server did not grant delta compression");
    }
    let start_bytes = client.wire_bytes;
    let mut received = Received::default();
    let mut previous: Vec<u8> = Vec::new();
    while received.publications < opts.publications {
        let reply = client.next().await?;
        let Some(publication) = reply.push.and_then(|push| push.r#pub) else { continue };
        let data = if publication.delta {
            received.deltas += 1;
            spinwire::protocol::fossil::apply(&previous, &publication.data)
                .map_err(|e| anyhow::anyhow!("patch {}: {e:?}", received.publications))?
        } else {
            publication.data.to_vec()
        };
        previous.clone_from(&data);
        received.documents.push(data);
        received.publications += 1;
    }
    // Bytes still buffered belong to the publications (read, not yet parsed, counted already).
    received.wire_bytes = client.wire_bytes - start_bytes;
    Ok(received)
}

async fn delta(opts: Opts) -> Result<serde_json::Value> {
    let channel = "delta:doc".to_owned();
    let started = Rc::new(RefCell::new(Vec::new()));
    for i in 0..opts.subs * 2 {
        let delta = i % 2 == 0;
        let (opts, channel) = (opts.clone(), channel.clone());
        let batch = opts.connect_batch;
        started
            .borrow_mut()
            .push((delta, spawn_local(delta_subscriber(opts, format!("d{i}"), channel, delta))));
        if i % batch == batch - 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Let every subscription settle before the first publication.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut api = Api::open(&opts.addr, &opts.api_key).await?;
    let mut document = Document::new(opts.doc_bytes);
    let mut published = Vec::new();
    let server_cpu = CpuSpan::start(opts.server_pid);
    let began = Instant::now();
    for n in 0..opts.publications {
        if n > 0 {
            document.change(n);
        }
        let data = document.json();
        published.push(serde_json::to_vec(&data)?);
        api.call("publish", &json!({"channel": channel, "data": data})).await?;
    }
    let publish_secs = began.elapsed().as_secs_f64();

    let mut plain = Vec::new();
    let mut deltas = Vec::new();
    for (delta, task) in started.take() {
        let received = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .context("subscribers did not receive every publication within 60 s")???;
        if delta { deltas.push(received) } else { plain.push(received) }
    }
    let server_cpu_s = server_cpu.elapsed();
    for received in plain.iter().chain(&deltas) {
        if received.documents.len() != published.len() {
            bail!("a subscriber got {} of {} publications", received.documents.len(), published.len());
        }
        for (n, (got, sent)) in received.documents.iter().zip(&published).enumerate() {
            let same = serde_json::from_slice::<serde_json::Value>(got)?
                == serde_json::from_slice::<serde_json::Value>(sent)?;
            if !same {
                bail!("publication {n} was rebuilt wrong");
            }
        }
    }
    let mean = |group: &[Received]| {
        group.iter().map(|r| r.wire_bytes as f64).sum::<f64>() / group.len().max(1) as f64
    };
    let (plain_bytes, delta_bytes) = (mean(&plain), mean(&deltas));
    let per_publication = |bytes: f64| bytes / opts.publications as f64;
    Ok(json!({
        "scenario": "delta",
        "doc_bytes": published[0].len(),
        "changed_bytes_per_publication": document.width,
        "publications": opts.publications,
        "subscribers_each": opts.subs,
        "plain_wire_bytes_per_publication": per_publication(plain_bytes),
        "delta_wire_bytes_per_publication": per_publication(delta_bytes),
        "delta_to_plain": delta_bytes / plain_bytes,
        "deltas_received_per_subscriber": deltas.iter().map(|r| r.deltas).sum::<usize>() / deltas.len().max(1),
        "publish_seconds": publish_secs,
        "server_cpu_s": server_cpu_s,
        "all_rebuilt_exactly": true,
    }))
}

// ---------------------------------------------------------------------------------------
// map
// ---------------------------------------------------------------------------------------

/// Pages through a map channel's state until live; returns (keys received, pages, seconds).
async fn map_subscriber(
    opts: Opts,
    user: String,
    channel: String,
    go: Rc<tokio::sync::Notify>,
) -> Result<(usize, usize, f64)> {
    let mut client = Client::open(&opts.addr).await?;
    client.connect(&opts.secret, &user).await?;
    go.notified().await;
    let began = Instant::now();
    let (mut keys, mut pages, mut cursor, mut epoch, mut offset) =
        (0usize, 0usize, String::new(), String::new(), 0u64);
    for id in 2u32.. {
        let subscribe = SubscribeRequest {
            channel: channel.clone(),
            r#type: MAP_TYPE,
            phase: STATE_PHASE,
            limit: opts.page,
            cursor: cursor.clone(),
            epoch: epoch.clone(),
            offset,
            ..Default::default()
        };
        let reply = client.call(Command { id, subscribe: Some(subscribe), ..Default::default() }).await?;
        let result = reply.subscribe.context("no subscribe result")?;
        pages += 1;
        keys += result.state.len();
        if result.phase != STATE_PHASE {
            break; // live
        }
        if result.cursor.is_empty() {
            bail!("a state page with no cursor that is not live");
        }
        (cursor, epoch, offset) = (result.cursor, result.epoch, result.offset);
    }
    Ok((keys, pages, began.elapsed().as_secs_f64()))
}

async fn map(opts: Opts) -> Result<serde_json::Value> {
    let channel = "map:state".to_owned();
    let mut api = Api::open(&opts.addr, &opts.api_key).await?;
    let filled = Instant::now();
    for key in 0..opts.keys {
        let data = json!({"key": key, "value": format!("value-of-{key:06}"), "score": key * 7 % 1000});
        api.call("map_publish", &json!({"channel": channel, "key": format!("k{key:06}"), "data": data}))
            .await?;
    }
    let fill_secs = filled.elapsed().as_secs_f64();

    let go = Rc::new(tokio::sync::Notify::new());
    let ready = Rc::new(Cell::new(0usize));
    let mut tasks = Vec::new();
    let batch = opts.connect_batch;
    for i in 0..opts.subs {
        let (opts, channel, go) = (opts.clone(), channel.clone(), go.clone());
        let ready = ready.clone();
        tasks.push(spawn_local(async move {
            let result = map_subscriber(opts, format!("m{i}"), channel, go).await;
            ready.set(ready.get() + 1);
            result
        }));
        if i % batch == batch - 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Every subscriber connects first; then all subscribe at once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let server_cpu = CpuSpan::start(opts.server_pid);
    let began = Instant::now();
    go.notify_waiters();
    let mut per_subscriber = Vec::new();
    for task in tasks {
        let (keys, pages, secs) = tokio::time::timeout(Duration::from_secs(300), task)
            .await
            .context("map sync took over 300 s")???;
        if keys != opts.keys {
            bail!("a subscriber received {keys} of {} keys", opts.keys);
        }
        per_subscriber.push((pages, secs));
    }
    let total_secs = began.elapsed().as_secs_f64();
    let server_cpu_s = server_cpu.elapsed();
    let mut times: Vec<f64> = per_subscriber.iter().map(|(_, secs)| *secs).collect();
    times.sort_by(f64::total_cmp);
    Ok(json!({
        "scenario": "map",
        "keys": opts.keys,
        "subscribers": opts.subs,
        "page_size": opts.page,
        "pages_per_subscriber": per_subscriber.first().map(|(pages, _)| *pages),
        "fill_seconds": fill_secs,
        "sync_seconds_all": total_secs,
        "sync_seconds_p50": times[times.len() / 2],
        "server_cpu_s": server_cpu_s,
        "keys_delivered": opts.keys * opts.subs,
    }))
}
