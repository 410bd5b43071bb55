//! `loadgen`: drives a Spinwire (or Centrifugo, or the reference `floor` server) with
//! Centrifugo-protocol WebSocket clients and reports rates, latency and loss as one JSON line.
//!
//! Runs on a single-threaded runtime (pin it to its own core); connections are local tasks with
//! hand-rolled framing (see the library docs). Scenarios:
//! * `fanout`  — N subscribers of one channel, a client publisher at a target delivery rate
//!   (`--search` finds the highest rate with zero loss and p99 < 50 ms; `--publish-addr`
//!   puts the publisher on another node of a cluster);
//! * `many`    — N connections with a personal channel and a group channel of 10 each;
//! * `idle`    — N connections with 0..2 subscriptions; server RSS per connection;
//! * `connect` — time to get N clients connected and subscribed;
//! * `api`     — HTTP server API publishes per second with no subscribers;
//! * `grpc-api` — the same over the gRPC API (`--conns` HTTP/2 connections × `--streams`).
//!
//! Subscribers speak WebSocket by default; `--transport grpc` makes them bidirectional gRPC
//! streams (`ClientStreamService/Connect`, Protobuf) to `--grpc-stream-addr`, up to
//! `--streams-per-conn` of them multiplexed on one HTTP/2 connection. The publisher stays a
//! WebSocket client.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use prost::Message;
use serde_json::json;
use spinwire_bench::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::{LocalSet, spawn_local};

/// Publish commands are batched into WebSocket frames of about this many bytes at most.
const PUBLISH_FRAME_BYTES: usize = 32 * 1024;

/// Command-line options (`--key value`).
#[derive(Debug, Clone)]
struct Opts {
    addr: String,
    /// Where the publisher connects (`--publish-addr`), when not `addr`: another node of a
    /// cluster, for publish → deliver across nodes.
    publish_addr: Option<String>,
    path: String,
    protocol: Protocol,
    subs: usize,
    payload: usize,
    secret: String,
    api_key: String,
    server_pid: Option<u32>,
    /// Other processes whose CPU a step reports (`--node-pids a,b`): the nodes of a cluster
    /// run, where `--server-pid` is the broker.
    node_pids: Vec<u32>,
    floor: bool,
    rate: f64,
    duration: Duration,
    warmup: Duration,
    search: bool,
    channels: usize,
    conns: usize,
    connect_batch: usize,
    /// Concurrent requests per HTTP/2 connection (`grpc-api`).
    streams: usize,
    /// Exit non-zero unless every measured step was clean (CI smoke runs).
    assert_clean: bool,
    /// Subscribers over gRPC streams instead of WebSocket.
    grpc_subscribers: bool,
    grpc_stream_addr: String,
    streams_per_conn: usize,
    /// What the rows name the measured server (`--server`): `spinwire`, `centrifugo`, or `floor`
    /// with `--floor`. Only a label: the generator speaks the same protocol to each.
    server: String,
}

impl Opts {
    /// How subscribers connect, as results name it.
    fn transport_name(&self) -> &'static str {
        if self.grpc_subscribers { "grpc" } else { "websocket" }
    }
}

fn parse_opts(args: &[String]) -> Result<Opts> {
    let mut map = HashMap::new();
    let mut flags = Vec::new();
    let mut iter = args.iter().peekable();
    while let Some(arg) = iter.next() {
        let key = arg.strip_prefix("--").with_context(|| format!("unexpected argument {arg:?}"))?;
        match iter.peek() {
            Some(next) if !next.starts_with("--") => {
                map.insert(key.to_owned(), iter.next().expect("peeked").clone());
            }
            _ => flags.push(key.to_owned()),
        }
    }
    let get = |key: &str, default: &str| map.get(key).cloned().unwrap_or_else(|| default.to_owned());
    let secs = |key: &str, default: &str| -> Result<Duration> {
        Ok(Duration::from_secs_f64(get(key, default).parse().with_context(|| format!("--{key}"))?))
    };
    let opts = Opts {
        addr: get("addr", "127.0.0.1:8000"),
        publish_addr: map.get("publish-addr").cloned(),
        path: get("path", "/connection/websocket"),
        protocol: get("protocol", "json").parse()?,
        subs: get("subs", "1000").parse()?,
        payload: get("payload", "128").parse()?,
        secret: get("secret", "bench-secret"),
        api_key: get("api-key", "bench-key"),
        server_pid: map.get("server-pid").map(|p| p.parse()).transpose()?,
        node_pids: match map.get("node-pids") {
            Some(list) => list.split(',').map(str::parse).collect::<Result<_, _>>().context("--node-pids")?,
            None => Vec::new(),
        },
        floor: flags.iter().any(|f| f == "floor"),
        rate: get("rate", "10000").parse()?,
        duration: secs("duration", "5")?,
        warmup: secs("warmup", "1")?,
        search: flags.iter().any(|f| f == "search"),
        channels: get("channels", "1").parse()?,
        conns: get("conns", "4").parse()?,
        connect_batch: get("connect-batch", "200").parse()?,
        streams: get("streams", "16").parse()?,
        assert_clean: flags.iter().any(|f| f == "assert-clean"),
        grpc_subscribers: match get("transport", "websocket").as_str() {
            "websocket" => false,
            "grpc" => true,
            other => bail!("--transport {other:?}: websocket or grpc"),
        },
        grpc_stream_addr: get("grpc-stream-addr", "127.0.0.1:8003"),
        streams_per_conn: get("streams-per-conn", "100").parse()?,
        server: get("server", if flags.iter().any(|f| f == "floor") { "floor" } else { "spinwire" }),
    };
    if opts.grpc_subscribers && opts.protocol != Protocol::Protobuf {
        bail!("--transport grpc carries Protobuf: add --protocol protobuf");
    }
    if opts.payload < MIN_PAYLOAD {
        bail!("--payload must be at least {MIN_PAYLOAD} bytes");
    }
    Ok(opts)
}

/// Delivery statistics shared by the subscriber tasks (single-threaded runtime).
struct Stats {
    /// Deliveries of publications inside the measured sequence window.
    received: u64,
    duplicated: u64,
    out_of_order: u64,
    /// Connections that closed or failed while running.
    closed: u64,
    latency: Histogram<u64>,
    /// Sequence window `[from, to)` being measured, per channel index space.
    window: (u64, u64),
}

impl Stats {
    fn new() -> Self {
        Self {
            received: 0,
            duplicated: 0,
            out_of_order: 0,
            closed: 0,
            latency: Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("valid bounds"),
            window: (u64::MAX, u64::MAX),
        }
    }

    fn reset(&mut self, window: (u64, u64)) {
        self.received = 0;
        self.duplicated = 0;
        self.out_of_order = 0;
        self.latency.reset();
        self.window = window;
    }
}

type Shared = Rc<RefCell<Stats>>;

struct Ctx {
    opts: Opts,
    start: Instant,
    stats: Shared,
    ready: Cell<usize>,
    failed: Cell<usize>,
}

/// Reads frames until the connection ends: answers pings, validates setup replies, records
/// publications. `expect_replies` setup replies are awaited before the client counts as ready.
async fn subscriber(ctx: Rc<Ctx>, user: String, channels: Vec<String>) {
    let result = run_subscriber(&ctx, &user, &channels).await;
    if let Err(error) = result {
        if ctx.ready.get() < ctx.opts.subs {
            eprintln!("subscriber {user}: {error:#}");
        }
        ctx.failed.set(ctx.failed.get() + 1);
        ctx.stats.borrow_mut().closed += 1;
    }
}

async fn run_subscriber(ctx: &Ctx, user: &str, channels: &[String]) -> Result<()> {
    let protocol = ctx.opts.protocol;
    let path = if ctx.opts.floor { "/subscribe".to_owned() } else { ctx.opts.path.clone() };
    let (mut stream, mut buf) = ws_connect(&ctx.opts.addr, &path, protocol).await?;
    let _ = stream.set_zero_linger();
    let mut pending_replies = 0usize;
    if ctx.opts.floor {
        ctx.ready.set(ctx.ready.get() + 1);
    } else {
        let token = spinwire::auth::mint_hs256(&ctx.opts.secret, &json!({"sub": user}));
        let mut frame = Vec::new();
        encode_frame(&mut frame, data_opcode(protocol), &setup_frame(protocol, &token, channels));
        stream.write_all(&frame).await?;
        pending_replies = 1 + channels.len();
    }
    // Last sequence seen per channel index (at most a few channels per connection).
    let mut last: Vec<(u32, u64)> = Vec::with_capacity(2);
    let mut out = Vec::new();
    loop {
        while let Some(header) = parse_frame(&buf) {
            let payload = &buf[header.header_len..header.header_len + header.payload_len];
            match header.opcode {
                opcode::TEXT | opcode::BINARY | 0 => {
                    let mut stats = ctx.stats.borrow_mut();
                    let now = now_ns(ctx.start);
                    let mut setup_error = false;
                    for_each_message(protocol, payload, |message| {
                        if is_ping(protocol, message) {
                            encode_frame(&mut out, data_opcode(protocol), pong_payload(protocol));
                        } else if let Some(stamp) = find_stamp(message) {
                            record(&mut stats, &mut last, stamp, now);
                        } else if pending_replies > 0 {
                            pending_replies -= 1;
                            setup_error |= is_error_reply(protocol, message);
                            if pending_replies == 0 && !setup_error {
                                ctx.ready.set(ctx.ready.get() + 1);
                            }
                        }
                    });
                    if setup_error {
                        bail!("connect or subscribe was refused");
                    }
                }
                opcode::PING => encode_frame(&mut out, opcode::PONG, payload),
                opcode::CLOSE => {
                    let code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]])).unwrap_or(0);
                    bail!("server closed the connection with {code}");
                }
                _ => {}
            }
            let consumed = header.header_len + header.payload_len;
            buf.advance(consumed);
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        if stream.read_buf(&mut buf).await? == 0 {
            bail!("connection closed");
        }
    }
}

fn record(stats: &mut Stats, last: &mut Vec<(u32, u64)>, stamp: Stamp, now: u64) {
    let slot = match last.iter_mut().find(|(ch, _)| *ch == stamp.channel) {
        Some(slot) => slot,
        None => {
            last.push((stamp.channel, 0));
            last.last_mut().expect("just pushed")
        }
    };
    if stamp.seq == slot.1 {
        stats.duplicated += 1;
        return;
    }
    if stamp.seq < slot.1 {
        stats.out_of_order += 1;
        return;
    }
    slot.1 = stamp.seq;
    if stamp.seq >= stats.window.0 && stamp.seq < stats.window.1 {
        stats.received += 1;
        let _ = stats.latency.record(now.saturating_sub(stamp.ts_ns).max(1_000));
    }
}

/// One HTTP/2 connection for gRPC stream subscribers.
async fn grpc_connection(addr: &str) -> Result<h2::client::SendRequest<Bytes>> {
    let stream = TcpStream::connect(addr).await.with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    let (client, connection) = h2::client::handshake(stream).await?;
    spawn_local(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Appends one gRPC length-prefixed message.
fn grpc_message(out: &mut BytesMut, message: &[u8]) {
    out.put_u8(0);
    out.put_u32(message.len() as u32);
    out.extend_from_slice(message);
}

/// A subscriber on a bidirectional gRPC stream: one `Command` or `Reply` per gRPC message.
async fn grpc_subscriber(
    ctx: Rc<Ctx>,
    client: h2::client::SendRequest<Bytes>,
    user: String,
    channels: Vec<String>,
) {
    if let Err(error) = run_grpc_subscriber(&ctx, client, &user, &channels).await {
        if ctx.ready.get() < ctx.opts.subs {
            eprintln!("grpc subscriber {user}: {error:#}");
        }
        ctx.failed.set(ctx.failed.get() + 1);
        ctx.stats.borrow_mut().closed += 1;
    }
}

async fn run_grpc_subscriber(
    ctx: &Ctx,
    client: h2::client::SendRequest<Bytes>,
    user: &str,
    channels: &[String],
) -> Result<()> {
    use spinwire::proto::client::{Command, ConnectRequest, SubscribeRequest};

    let head = http::Request::post(format!(
        "http://{}{}",
        ctx.opts.grpc_stream_addr,
        spinwire::proto::stream_paths::CLIENT_STREAM_SERVICE_CONNECT
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())?;
    let mut client = client.ready().await?;
    let (response, mut send) = client.send_request(head, false)?;
    let token = spinwire::auth::mint_hs256(&ctx.opts.secret, &json!({"sub": user}));
    let mut out = BytesMut::new();
    let connect = Command {
        id: 1,
        connect: Some(ConnectRequest { token, ..Default::default() }),
        ..Default::default()
    };
    grpc_message(&mut out, &connect.encode_to_vec());
    for (i, channel) in channels.iter().enumerate() {
        let subscribe = Command {
            id: 2 + i as u32,
            subscribe: Some(SubscribeRequest { channel: channel.clone(), ..Default::default() }),
            ..Default::default()
        };
        grpc_message(&mut out, &subscribe.encode_to_vec());
    }
    send.send_data(out.split().freeze(), false)?;
    let mut body = response.await?.into_body();
    let mut pending_replies = 1 + channels.len();
    let mut last: Vec<(u32, u64)> = Vec::with_capacity(2);
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        buf.extend_from_slice(&chunk);
        let mut pongs = 0;
        {
            let mut stats = ctx.stats.borrow_mut();
            let now = now_ns(ctx.start);
            while buf.len() >= 5 {
                let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                if buf.len() < 5 + len {
                    break;
                }
                let message = &buf[5..5 + len];
                if message.is_empty() {
                    pongs += 1;
                } else if let Some(stamp) = find_stamp(message) {
                    record(&mut stats, &mut last, stamp, now);
                } else if pending_replies > 0 {
                    pending_replies -= 1;
                    if is_error_reply(Protocol::Protobuf, message) {
                        bail!("connect or subscribe was refused");
                    }
                    if pending_replies == 0 {
                        ctx.ready.set(ctx.ready.get() + 1);
                    }
                }
                buf.advance(5 + len);
            }
        }
        for _ in 0..pongs {
            // A pong is an empty command.
            send.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), false)?;
        }
    }
    bail!("gRPC stream ended")
}

/// Opens `count` subscribers, paced in batches, and waits until all are ready.
async fn open_subscribers(
    ctx: &Rc<Ctx>,
    count: usize,
    channels_of: impl Fn(usize) -> Vec<String>,
) -> Result<Duration> {
    let began = Instant::now();
    let mut grpc_conns: Vec<h2::client::SendRequest<Bytes>> = Vec::new();
    for i in 0..count {
        if ctx.opts.grpc_subscribers {
            if i % ctx.opts.streams_per_conn == 0 {
                grpc_conns.push(grpc_connection(&ctx.opts.grpc_stream_addr).await?);
            }
            let client = grpc_conns.last().expect("opened above").clone();
            spawn_local(grpc_subscriber(ctx.clone(), client, format!("u{i}"), channels_of(i)));
        } else {
            spawn_local(subscriber(ctx.clone(), format!("u{i}"), channels_of(i)));
        }
        if (i + 1) % ctx.opts.connect_batch == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while ctx.ready.get() < count {
        if ctx.failed.get() > 0 {
            bail!("{} subscriber(s) failed during setup", ctx.failed.get());
        }
        if Instant::now() > deadline {
            bail!("only {} of {count} subscribers ready after 60 s", ctx.ready.get());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(began.elapsed())
}

/// A publishing connection: client-side publishes (or raw payloads to the floor server).
struct Publisher {
    stream: tokio::net::tcp::OwnedWriteHalf,
    protocol: Protocol,
    floor: bool,
    next_id: u32,
    /// Pings seen by the reader and not answered yet.
    pongs_due: Rc<Cell<u32>>,
}

impl Publisher {
    async fn open(ctx: &Ctx) -> Result<Self> {
        let protocol = ctx.opts.protocol;
        let path = if ctx.opts.floor { "/publish".to_owned() } else { ctx.opts.path.clone() };
        let addr = ctx.opts.publish_addr.as_ref().unwrap_or(&ctx.opts.addr);
        let (mut stream, _) = ws_connect(addr, &path, protocol).await?;
        if !ctx.opts.floor {
            let token = spinwire::auth::mint_hs256(&ctx.opts.secret, &json!({"sub": "publisher"}));
            let mut frame = Vec::new();
            encode_frame(&mut frame, data_opcode(protocol), &setup_frame(protocol, &token, &[]));
            stream.write_all(&frame).await?;
        }
        let (read, write) = stream.into_split();
        // Drain replies so the publisher's receive window never closes, and flag pings; the
        // publishing loop answers them with its next write.
        let pongs_due = Rc::new(Cell::new(0u32));
        let flag = pongs_due.clone();
        spawn_local(async move {
            let mut read = read;
            let mut buf = BytesMut::with_capacity(64 * 1024);
            while matches!(read.read_buf(&mut buf).await, Ok(n) if n > 0) {
                while let Some(header) = parse_frame(&buf) {
                    let payload = &buf[header.header_len..header.header_len + header.payload_len];
                    for_each_message(protocol, payload, |message| {
                        if is_ping(protocol, message) {
                            flag.set(flag.get() + 1);
                        }
                    });
                    let consumed = header.header_len + header.payload_len;
                    buf.advance(consumed);
                }
                buf.reserve(16 * 1024);
            }
        });
        Ok(Self { stream: write, protocol, floor: ctx.opts.floor, next_id: 2, pongs_due })
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(scenario) = args.first().cloned() else {
        bail!("usage: loadgen <fanout|many|idle|connect|api|grpc-api> [--options]");
    };
    let opts = parse_opts(&args[1..])?;
    let server = opts.server.clone();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = LocalSet::new();
    let mut result = local.block_on(&runtime, async move {
        match scenario.as_str() {
            "fanout" => fanout(opts, false).await,
            "many" => fanout(opts, true).await,
            "idle" => idle(opts).await,
            "connect" => connect(opts).await,
            "api" => api(opts).await,
            "grpc-api" => grpc_api(opts).await,
            other => bail!("unknown scenario {other:?}"),
        }
    })?;
    result["server"] = json!(server);
    println!("{result}");
    Ok(())
}

fn new_ctx(opts: Opts) -> Rc<Ctx> {
    Rc::new(Ctx {
        opts,
        start: Instant::now(),
        stats: Rc::new(RefCell::new(Stats::new())),
        ready: Cell::new(0),
        failed: Cell::new(0),
    })
}

fn self_cpu_seconds() -> f64 {
    process_cpu_seconds(std::process::id()).unwrap_or(0.0)
}

/// Result of one measured step of a fan-out run.
struct Step {
    target_rate: f64,
    delivered_rate: f64,
    lost: u64,
    duplicated: u64,
    out_of_order: u64,
    closed: u64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    server_cpu: Option<f64>,
    loadgen_cpu: f64,
    /// The `--node-pids` processes' CPU seconds, when given.
    nodes_cpu: Option<f64>,
    deliveries: u64,
    kept_up: bool,
}

impl Step {
    /// No loss, duplicates, reordering or dropped connections.
    fn clean(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.out_of_order == 0
            && self.closed == 0
            && self.deliveries > 0
    }

    /// Clean, kept up with the offered rate, and p99 < 50 ms.
    fn ok(&self) -> bool {
        self.clean() && self.p99_ms < 50.0 && self.kept_up
    }

    fn json(&self) -> serde_json::Value {
        let per_million =
            |cpu: f64| if self.deliveries > 0 { cpu / self.deliveries as f64 * 1e6 } else { 0.0 };
        json!({
            "target_deliveries_per_s": self.target_rate.round(),
            "deliveries_per_s": self.delivered_rate.round(),
            "lost": self.lost, "duplicated": self.duplicated, "out_of_order": self.out_of_order,
            "closed": self.closed,
            "p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "p999_ms": self.p999_ms, "max_ms": self.max_ms,
            "server_cpu_s_per_1m": self.server_cpu.map(per_million),
            "loadgen_cpu_s_per_1m": per_million(self.loadgen_cpu),
            "nodes_cpu_s_per_1m": self.nodes_cpu.map(per_million),
            "clean": self.clean(),
            "kept_up": self.kept_up,
            "ok": self.ok(),
        })
    }
}

/// Publishes at `rate` deliveries/s for `warmup + duration`, measuring only the last part.
async fn measure(
    ctx: &Rc<Ctx>,
    publisher: &mut Publisher,
    channels: &[String],
    receivers_per_channel: usize,
    rate: f64,
    seq: &mut u64,
) -> Result<Step> {
    let opts = &ctx.opts;
    let publications_per_s = rate / receivers_per_channel as f64;
    let total = opts.warmup + opts.duration;
    let began = Instant::now();
    let mut sent_total: u64 = 0;
    let mut window_start = None;
    let mut frame = Vec::new();
    let mut payload_batch = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut kept_up = true;
    let window_end_seq = loop {
        ticker.tick().await;
        let elapsed = began.elapsed();
        if window_start.is_none() && elapsed >= opts.warmup {
            ctx.stats.borrow_mut().reset((*seq + 1, u64::MAX));
            let cpu = WindowCpu {
                server: CpuSpan::start(opts.server_pid),
                loadgen: self_cpu_seconds(),
                nodes: CpuSpan::start(opts.node_pids.iter().copied()),
            };
            window_start = Some((Instant::now(), *seq + 1, cpu));
        }
        if elapsed >= total {
            break *seq + 1;
        }
        let due = (elapsed.as_secs_f64() * publications_per_s) as u64;
        if due > sent_total + (publications_per_s as u64 / 10).max(100) {
            kept_up = false;
        }
        frame.clear();
        payload_batch.clear();
        while sent_total < due {
            *seq += 1;
            sent_total += 1;
            encode_publication(ctx, publisher, channels, *seq, &mut frame, &mut payload_batch);
        }
        if !payload_batch.is_empty() {
            encode_frame(&mut frame, data_opcode(publisher.protocol), &payload_batch);
        }
        for _ in 0..publisher.pongs_due.replace(0) {
            encode_frame(&mut frame, data_opcode(publisher.protocol), pong_payload(publisher.protocol));
        }
        if !frame.is_empty() {
            publisher.stream.write_all(&frame).await?;
        }
    };
    let (window_began, first_seq, cpu_before) = window_start.context("duration too short")?;
    ctx.stats.borrow_mut().window = (first_seq, window_end_seq);
    let window = Window { began: window_began, first_seq, end_seq: window_end_seq, cpu_before, kept_up };
    finish_step(ctx, window, receivers_per_channel, rate).await
}

/// Publication `seq` into the frame being built: a raw data frame to the floor server, or a
/// publish command batched with others into one frame to Spinwire.
fn encode_publication(
    ctx: &Ctx,
    publisher: &mut Publisher,
    channels: &[String],
    seq: u64,
    frame: &mut Vec<u8>,
    payload_batch: &mut Vec<u8>,
) {
    let channel = (seq as usize) % channels.len();
    let payload = make_payload(ctx.opts.payload, now_ns(ctx.start), seq, channel as u32);
    if publisher.floor {
        encode_frame(frame, data_opcode(publisher.protocol), &payload);
        return;
    }
    publisher.next_id = publisher.next_id.wrapping_add(1).max(2);
    if publisher.protocol == Protocol::Json && !payload_batch.is_empty() {
        payload_batch.push(b'\n');
    }
    payload_batch.extend_from_slice(&publish_command(
        publisher.protocol,
        publisher.next_id,
        &channels[channel],
        &payload,
    ));
    // A late tick can owe thousands of publications: keep every frame well under the server's
    // 64 KiB message limit, which closes the connection with 1009.
    if payload_batch.len() >= PUBLISH_FRAME_BYTES {
        encode_frame(frame, data_opcode(publisher.protocol), payload_batch);
        payload_batch.clear();
    }
}

/// The measured part of a step.
struct Window {
    began: Instant,
    /// Sequence numbers published inside it: `first_seq..end_seq`.
    first_seq: u64,
    end_seq: u64,
    cpu_before: WindowCpu,
    kept_up: bool,
}

/// The CPU clocks a window reads at its end: the server's, the generator's own (seconds when
/// it began) and the `--node-pids` processes'.
struct WindowCpu {
    server: CpuSpan,
    loadgen: f64,
    nodes: CpuSpan,
}

/// Waits (up to 3 s) for the window's deliveries to arrive and sums the step up.
async fn finish_step(
    ctx: &Ctx,
    window_info: Window,
    receivers_per_channel: usize,
    rate: f64,
) -> Result<Step> {
    let Window { began: window_began, first_seq, end_seq: window_end_seq, cpu_before, kept_up } = window_info;
    let window = window_began.elapsed();
    let server_cpu = cpu_before.server.elapsed();
    let loadgen_cpu = self_cpu_seconds() - cpu_before.loadgen;
    let nodes_cpu = cpu_before.nodes.elapsed();
    // Let in-flight deliveries arrive.
    let expected = (window_end_seq - first_seq) * receivers_per_channel as u64;
    let drain_deadline = Instant::now() + Duration::from_secs(3);
    while ctx.stats.borrow().received < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stats = ctx.stats.borrow();
    let ms = |q: f64| stats.latency.value_at_quantile(q) as f64 / 1e6;
    Ok(Step {
        target_rate: rate,
        delivered_rate: stats.received as f64 / window.as_secs_f64(),
        lost: expected.saturating_sub(stats.received),
        duplicated: stats.duplicated,
        out_of_order: stats.out_of_order,
        closed: stats.closed,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: stats.latency.max() as f64 / 1e6,
        server_cpu,
        loadgen_cpu,
        nodes_cpu,
        deliveries: stats.received,
        kept_up,
    })
}

/// `fanout`: one channel × `--subs` subscribers. `many`: personal + group-of-10 channels.
async fn fanout(opts: Opts, many: bool) -> Result<serde_json::Value> {
    let ctx = new_ctx(opts.clone());
    let (channels, receivers, setup): (Vec<String>, usize, Duration) = if many {
        let groups = opts.subs.div_ceil(10);
        let setup =
            open_subscribers(&ctx, opts.subs, |i| vec![format!("bench:u{i}"), format!("bench:g{}", i / 10)])
                .await?;
        ((0..groups).map(|g| format!("bench:g{g}")).collect(), 10, setup)
    } else {
        let setup = open_subscribers(&ctx, opts.subs, |_| vec!["bench:fan".to_owned()]).await?;
        (vec!["bench:fan".to_owned()], opts.subs, setup)
    };
    let mut publisher = Publisher::open(&ctx).await?;
    let mut seq = 0u64;
    let scenario = if many { "many" } else { "fanout" };
    let mut result = json!({
        "scenario": scenario, "transport": opts.transport_name(),
        "protocol": opts.protocol.to_string(), "subs": opts.subs, "payload": opts.payload,
        "setup_s": setup.as_secs_f64(),
    });
    if opts.search {
        let mut search =
            Search { ctx: &ctx, publisher: &mut publisher, channels: &channels, receivers, seq: &mut seq };
        let steps = search.run().await;
        let best =
            steps.iter().filter(|s| s.ok()).max_by(|a, b| a.delivered_rate.total_cmp(&b.delivered_rate));
        let best_clean = steps
            .iter()
            .filter(|s| s.clean() && s.kept_up)
            .max_by(|a, b| a.delivered_rate.total_cmp(&b.delivered_rate));
        result["max"] = json!(best.map(Step::json));
        result["max_clean"] = json!(best_clean.map(Step::json));
        result["steps"] = json!(steps.iter().map(Step::json).collect::<Vec<_>>());
    } else {
        let step = measure(&ctx, &mut publisher, &channels, receivers, opts.rate, &mut seq).await?;
        if opts.assert_clean && !step.clean() {
            bail!("not clean: {}", step.json());
        }
        result["result"] = step.json();
    }
    Ok(result)
}

/// The search for a scenario's highest clean rate, and the p99 < 50 ms boundary below it.
struct Search<'a> {
    ctx: &'a Rc<Ctx>,
    publisher: &'a mut Publisher,
    channels: &'a [String],
    receivers: usize,
    seq: &'a mut u64,
}

impl Search<'_> {
    async fn run(&mut self) -> Vec<Step> {
        let mut steps = self.climb().await;
        self.refine(&mut steps).await;
        steps
    }

    async fn step(&mut self, rate: f64) -> Option<Step> {
        match measure(self.ctx, self.publisher, self.channels, self.receivers, rate, self.seq).await {
            Ok(step) => {
                eprintln!("{}", step.json());
                Some(step)
            }
            Err(error) => {
                // An overloaded server may drop the publisher (3008 slow): the search ends.
                eprintln!("step at {rate:.0} deliveries/s failed: {error:#}");
                None
            }
        }
    }

    /// Up by 1.5× while clean, then bisects between the best clean rate and the lowest bad one.
    async fn climb(&mut self) -> Vec<Step> {
        let opts = &self.ctx.opts;
        let mut steps = Vec::new();
        let mut good: Option<f64> = None;
        let mut bad: Option<f64> = None;
        let mut rate = opts.rate;
        for _ in 0..12 {
            let Some(step) = self.step(rate).await else { break };
            // The search climbs on clean delivery; p99 < 50 ms is reported separately because
            // with many subscribers one fan-out alone takes longer than that on loopback.
            let ok = step.clean() && step.kept_up;
            steps.push(step);
            if ok {
                good = Some(rate);
            } else {
                bad = Some(rate);
            }
            if self.ctx.stats.borrow().closed > 0 {
                break;
            }
            rate = match (good, bad) {
                (Some(g), None) => g * 1.5,
                (None, Some(b)) => b / 2.0,
                (Some(g), Some(b)) if b / g > 1.1 => (g + b) / 2.0,
                _ => break,
            };
            // Below 20 publications per step a step says nothing.
            let floor_rate = 20.0 * self.receivers as f64 / opts.duration.as_secs_f64();
            if rate < floor_rate {
                break;
            }
        }
        steps
    }

    /// Refines the p99 < 50 ms boundary between the best ok step and the next rate up.
    async fn refine(&mut self, steps: &mut Vec<Step>) {
        for _ in 0..3 {
            let Some(low) = steps.iter().filter(|s| s.ok()).map(|s| s.target_rate).reduce(f64::max) else {
                break;
            };
            let Some(high) = steps
                .iter()
                .filter(|s| !s.ok() && s.target_rate > low)
                .map(|s| s.target_rate)
                .reduce(f64::min)
            else {
                break;
            };
            if high / low <= 1.1 || self.ctx.stats.borrow().closed > 0 {
                break;
            }
            let Some(step) = self.step((low + high) / 2.0).await else { break };
            steps.push(step);
        }
    }
}

/// `idle`: server RSS per connection with `--channels` (0, 1 or 2) subscriptions each.
async fn idle(opts: Opts) -> Result<serde_json::Value> {
    let pid = opts.server_pid.context("idle needs --server-pid")?;
    let channels = opts.channels;
    let ctx = new_ctx(opts.clone());
    let rss_before = process_rss_bytes(pid)?;
    let slab_before = slab_bytes().unwrap_or(0);
    open_subscribers(&ctx, opts.subs, |i| {
        [format!("bench:u{i}"), format!("bench:g{}", i / 10)].into_iter().take(channels).collect()
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = process_rss_bytes(pid)?;
    let slab_after = slab_bytes().unwrap_or(0);
    Ok(json!({
        "scenario": "idle", "transport": opts.transport_name(), "protocol": opts.protocol.to_string(), "conns": opts.subs, "subscriptions_each": channels,
        "server_rss_bytes_per_conn": (rss_after.saturating_sub(rss_before)) as f64 / opts.subs as f64,
        "kernel_slab_bytes_per_conn_both_ends": (slab_after.saturating_sub(slab_before)) as f64 / opts.subs as f64,
        "server_rss_total_mb": rss_after as f64 / 1048576.0,
    }))
}

/// `connect`: time until `--subs` clients are connected and subscribed.
async fn connect(opts: Opts) -> Result<serde_json::Value> {
    let ctx = new_ctx(opts.clone());
    let elapsed = open_subscribers(&ctx, opts.subs, |i| vec![format!("bench:u{i}")]).await?;
    Ok(json!({
        "scenario": "connect", "transport": opts.transport_name(), "protocol": opts.protocol.to_string(), "conns": opts.subs,
        "seconds": elapsed.as_secs_f64(),
        "connects_per_s": opts.subs as f64 / elapsed.as_secs_f64(),
    }))
}

/// `api`: closed-loop HTTP `POST /api/publish` over `--conns` keep-alive connections.
async fn api(opts: Opts) -> Result<serde_json::Value> {
    let done = Rc::new(Cell::new(0u64));
    let errors = Rc::new(Cell::new(0u64));
    let deadline = Instant::now() + opts.duration;
    let server_cpu = CpuSpan::start(opts.server_pid);
    let began = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..opts.conns {
        let (done, errors, opts) = (done.clone(), errors.clone(), opts.clone());
        tasks.push(spawn_local(async move {
            let result: Result<()> = async {
                let mut stream = TcpStream::connect(&opts.addr).await?;
                stream.set_nodelay(true)?;
                let mut buf = BytesMut::with_capacity(4096);
                let mut n = 0u64;
                while Instant::now() < deadline {
                    n += 1;
                    let body = format!(r#"{{"channel":"bench:api{c}","data":{{"n":{n}}}}}"#);
                    let request = format!(
                        "POST /api/publish HTTP/1.1\r\nHost: {}\r\nX-API-Key: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        opts.addr, opts.api_key, body.len()
                    );
                    stream.write_all(request.as_bytes()).await?;
                    loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = std::str::from_utf8(&buf[..end])?.to_ascii_lowercase();
                            let len: usize = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .map(|v| v.trim().parse())
                                .transpose()?
                                .unwrap_or(0);
                            if buf.len() >= end + 4 + len {
                                if !head.starts_with("http/1.1 200") || buf[end + 4..end + 4 + len].starts_with(b"{\"error\"") {
                                    errors.set(errors.get() + 1);
                                }
                                buf.advance(end + 4 + len);
                                break;
                            }
                        }
                        if stream.read_buf(&mut buf).await? == 0 {
                            bail!("API connection closed");
                        }
                    }
                    done.set(done.get() + 1);
                }
                Ok(())
            }
            .await;
            if let Err(error) = result {
                eprintln!("api connection: {error:#}");
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = began.elapsed().as_secs_f64();
    let server_cpu = server_cpu.elapsed();
    Ok(json!({
        "scenario": "api", "transport": "http", "conns": opts.conns,
        "publishes_per_s": done.get() as f64 / elapsed, "errors": errors.get(),
        "server_cpu_us_per_publish": server_cpu.map(|cpu| cpu / done.get().max(1) as f64 * 1e6),
    }))
}

/// `grpc-api`: closed-loop gRPC `CentrifugoApi/Publish` over `--conns` HTTP/2 connections with
/// `--streams` requests in flight on each (raw h2, request bytes encoded with the server's own
/// prost types; `--api-key` goes in `authorization: apikey …`).
async fn grpc_api(opts: Opts) -> Result<serde_json::Value> {
    let done = Rc::new(Cell::new(0u64));
    let errors = Rc::new(Cell::new(0u64));
    let deadline = Instant::now() + opts.duration;
    let server_cpu = CpuSpan::start(opts.server_pid);
    let began = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..opts.conns {
        let stream = TcpStream::connect(&opts.addr).await?;
        stream.set_nodelay(true)?;
        let (client, connection) = h2::client::handshake(stream).await?;
        spawn_local(async move {
            let _ = connection.await;
        });
        for s in 0..opts.streams {
            let counts = (done.clone(), errors.clone());
            let (opts, client) = (opts.clone(), client.clone());
            let channel = format!("bench:grpc{c}_{s}");
            tasks.push(spawn_local(async move {
                if let Err(error) = grpc_publish_until(client, &opts, &channel, deadline, counts).await {
                    eprintln!("grpc-api stream: {error:#}");
                }
            }));
        }
    }
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = began.elapsed().as_secs_f64();
    let server_cpu = server_cpu.elapsed();
    Ok(json!({
        "scenario": "api", "transport": "grpc", "conns": opts.conns, "streams": opts.streams,
        "publishes_per_s": done.get() as f64 / elapsed, "errors": errors.get(),
        "server_cpu_us_per_publish": server_cpu.map(|cpu| cpu / done.get().max(1) as f64 * 1e6),
    }))
}

/// One stream's publishes, one after another until `deadline`, counted as (done, errors).
async fn grpc_publish_until(
    mut client: h2::client::SendRequest<Bytes>,
    opts: &Opts,
    channel: &str,
    deadline: Instant,
    (done, errors): (Rc<Cell<u64>>, Rc<Cell<u64>>),
) -> Result<()> {
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let (ready, failure) = grpc_publish(client, opts, channel, n).await?;
        client = ready;
        if let Some(failure) = failure {
            if errors.get() == 0 {
                eprintln!("grpc-api: first failed publish: {failure}");
            }
            errors.set(errors.get() + 1);
        }
        done.set(done.get() + 1);
    }
    Ok(())
}

/// One unary `CentrifugoApi/Publish` over raw HTTP/2. Returns the client for the next call and,
/// when the server answered with a failure, what it answered.
async fn grpc_publish(
    client: h2::client::SendRequest<Bytes>,
    opts: &Opts,
    channel: &str,
    n: u64,
) -> Result<(h2::client::SendRequest<Bytes>, Option<String>)> {
    use spinwire::proto::api::{PublishRequest, PublishResponse};

    let request = PublishRequest {
        channel: channel.to_owned(),
        data: Bytes::from(format!(r#"{{"n":{n}}}"#)),
        ..Default::default()
    };
    let message = request.encode_to_vec();
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0);
    framed.put_u32(message.len() as u32);
    framed.extend_from_slice(&message);
    let head =
        http::Request::post(format!("http://{}/centrifugal.centrifugo.api.CentrifugoApi/Publish", opts.addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("authorization", format!("apikey {}", opts.api_key))
            .body(())?;
    let mut client = client.ready().await?;
    let (response, mut send) = client.send_request(head, false)?;
    send.send_data(framed.freeze(), true)?;
    let mut body = response.await?.into_body();
    let mut reply = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        reply.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await?;
    let status_ok =
        trailers.as_ref().and_then(|t| t.get("grpc-status")).is_some_and(|v| v.as_bytes() == b"0");
    let decoded = (reply.len() >= 5).then(|| PublishResponse::decode(&reply[5..]));
    let failure = match decoded {
        Some(Ok(response)) if status_ok && response.error.is_none() => None,
        other => Some(format!("{other:?}, trailers {trailers:?}")),
    };
    Ok((client, failure))
}
