//! `proxy_bench`: what a proxy costs. Two roles, each a JSON line on stdout:
//!
//! * `proxy_bench backend --http-port P --grpc-port G` — a trivial application backend: the
//!   HTTP proxy protocol (hand-rolled HTTP/1.1 keep-alive, `/connect` and `/rpc`) and the gRPC
//!   `CentrifugoProxy` service (Connect and RPC, raw HTTP/2); it answers at once, so what is
//!   measured is the proxy path in the server, not a backend.
//! * `proxy_bench connect --addr A --conns C --duration S [--token SECRET] [--label L]` — C
//!   workers each open a WebSocket, connect (with an HS256 token when `--token` is given,
//!   otherwise tokenless with connect data, so through the connect proxy), wait for the reply,
//!   close, and start again. Reports connects/s and the connect latency (WebSocket open to
//!   connect reply) p50/p99.
//! * `proxy_bench rpc --addr A --conns C --duration S [--label L]` — C connections each call
//!   an RPC method in a closed loop. Reports round trips/s and p50/p99.
//!
//! Both client roles take `--server NAME` (the label rows carry) and `--server-pid PID` (adds
//! the server's CPU per operation over the measured span).
//!
//! Single-threaded like `loadgen`; pin it to the generator's core.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::{Buf, Bytes, BytesMut};
use hdrhistogram::Histogram;
use prost::Message as _;
use serde_json::json;
use spinwire::proto::client::{Command, ConnectRequest, RpcRequest};
use spinwire::proto::proxy as pb;
use spinwire_bench::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{LocalSet, spawn_local};

/// `--key value` options.
struct Opts {
    addr: String,
    conns: usize,
    duration: Duration,
    token_secret: Option<String>,
    label: String,
    /// What the results name the server (`--server`, default spinwire).
    server: String,
    /// The measured server's pid (`--server-pid`): reports its CPU per operation.
    server_pid: Option<u32>,
    http_port: u16,
    grpc_port: u16,
}

fn parse_opts(args: &[String]) -> Result<Opts> {
    let mut opts = Opts {
        addr: "127.0.0.1:8000".into(),
        conns: 16,
        duration: Duration::from_secs(5),
        token_secret: None,
        label: String::new(),
        server: "spinwire".into(),
        server_pid: None,
        http_port: 0,
        grpc_port: 0,
    };
    let mut iter = args.iter();
    while let Some(flag) = iter.next() {
        let value = iter.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--addr" => opts.addr = value.clone(),
            "--conns" => opts.conns = value.parse()?,
            "--duration" => opts.duration = Duration::from_secs_f64(value.parse()?),
            "--token" => opts.token_secret = Some(value.clone()),
            "--label" => opts.label = value.clone(),
            "--server" => opts.server = value.clone(),
            "--server-pid" => opts.server_pid = Some(value.parse()?),
            "--http-port" => opts.http_port = value.parse()?,
            "--grpc-port" => opts.grpc_port = value.parse()?,
            other => bail!("unknown option {other}"),
        }
    }
    Ok(opts)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((role, rest)) = args.split_first() else {
        bail!("usage: proxy_bench backend|connect|rpc [options]");
    };
    let opts = parse_opts(rest)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = LocalSet::new();
    let report = local.block_on(&runtime, async {
        match role.as_str() {
            "backend" => backend(opts).await.map(|()| serde_json::Value::Null),
            "connect" => connect(opts).await,
            "rpc" => rpc(opts).await,
            other => bail!("unknown role {other}"),
        }
    })?;
    println!("{report}");
    Ok(())
}

// ------------------------------------------------------------------------------- backend

/// Serves both protocols until killed.
async fn backend(opts: Opts) -> Result<()> {
    let http = TcpListener::bind(("127.0.0.1", opts.http_port)).await?;
    let grpc = TcpListener::bind(("127.0.0.1", opts.grpc_port)).await?;
    let ports = json!({"http_port": http.local_addr()?.port(), "grpc_port": grpc.local_addr()?.port()});
    println!("{ports}");
    spawn_local(async move {
        while let Ok((socket, _)) = grpc.accept().await {
            spawn_local(serve_grpc(socket));
        }
    });
    while let Ok((socket, _)) = http.accept().await {
        spawn_local(serve_http(socket));
    }
    Ok(())
}

/// The answer for a request path, JSON or Protobuf.
fn answer(path: &str, json_body: bool) -> Vec<u8> {
    let rpc = path.ends_with("/rpc") || path.ends_with("/RPC");
    match (rpc, json_body) {
        (false, true) => br#"{"result":{"user":"bench-user"}}"#.to_vec(),
        (true, true) => br#"{"result":{"data":{"ok":true}}}"#.to_vec(),
        (false, false) => {
            let result = pb::ConnectResult { user: "bench-user".into(), ..Default::default() };
            pb::ConnectResponse { result: Some(result), ..Default::default() }.encode_to_vec()
        }
        (true, false) => {
            let result = pb::RpcResult { data: Bytes::from_static(br#"{"ok":true}"#), ..Default::default() };
            pb::RpcResponse { result: Some(result), ..Default::default() }.encode_to_vec()
        }
    }
}

/// HTTP/1.1 keep-alive: one request at a time, each answered at once.
async fn serve_http(mut socket: TcpStream) {
    let _ = socket.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(8 * 1024);
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            if !matches!(socket.read_buf(&mut buf).await, Ok(n) if n > 0) {
                return;
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < end + 4 + length {
            if !matches!(socket.read_buf(&mut buf).await, Ok(n) if n > 0) {
                return;
            }
        }
        buf.advance(end + 4 + length);
        let body = answer(&path, true);
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        if socket.write_all(&[head.as_bytes(), &body].concat()).await.is_err() {
            return;
        }
    }
}

/// gRPC over HTTP/2: each unary call answered with its response message and status 0.
async fn serve_grpc(socket: TcpStream) {
    let _ = socket.set_nodelay(true);
    let Ok(mut connection) = h2::server::handshake(socket).await else { return };
    while let Some(Ok((request, mut respond))) = connection.accept().await {
        spawn_local(async move {
            let path = request.uri().path().to_owned();
            let mut body = request.into_body();
            while let Some(Ok(chunk)) = body.data().await {
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            let message = answer(&path, false);
            let mut framed = vec![0u8];
            framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
            framed.extend_from_slice(&message);
            let response =
                http::Response::builder().header("content-type", "application/grpc").body(()).unwrap();
            let Ok(mut send) = respond.send_response(response, false) else { return };
            let _ = send.send_data(Bytes::from(framed), false);
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            let _ = send.send_trailers(trailers);
        });
    }
}

// ------------------------------------------------------------------------------- clients

/// Latencies and counts shared by the workers.
struct Tally {
    histogram: RefCell<Histogram<u64>>,
    done: Cell<u64>,
    failed: Cell<u64>,
}

impl Tally {
    fn new() -> Rc<Self> {
        let histogram = Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
        Rc::new(Self { histogram: RefCell::new(histogram), done: Cell::new(0), failed: Cell::new(0) })
    }

    fn record(&self, started: Instant) {
        let micros = started.elapsed().as_micros().max(1) as u64;
        let _ = self.histogram.borrow_mut().record(micros);
        self.done.set(self.done.get() + 1);
    }

    /// `server_cpu` is the server's CPU-seconds over the measured span, when its pid is known.
    fn report(
        &self,
        scenario: &str,
        opts: &Opts,
        elapsed: Duration,
        server_cpu: Option<f64>,
    ) -> serde_json::Value {
        let histogram = self.histogram.borrow();
        let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
        let done = self.done.get();
        let cpu_us_per_op = server_cpu.filter(|_| done > 0).map(|cpu| cpu * 1e6 / done as f64);
        json!({
            "scenario": scenario, "label": opts.label, "server": opts.server, "conns": opts.conns,
            "seconds": elapsed.as_secs_f64(), "done": done, "failed": self.failed.get(),
            "per_s": done as f64 / elapsed.as_secs_f64(),
            "p50_ms": ms(0.5), "p99_ms": ms(0.99), "server_cpu_us_per_op": cpu_us_per_op,
        })
    }
}

/// Sends one command frame (JSON protocol).
async fn send_command(stream: &mut TcpStream, command: &Command) -> Result<()> {
    let mut frame = Vec::new();
    encode_frame(&mut frame, data_opcode(Protocol::Json), &encode_command(Protocol::Json, command));
    Ok(stream.write_all(&frame).await?)
}

/// Reads until a reply with `id` arrives; whether it is a success.
async fn await_reply(stream: &mut TcpStream, buf: &mut BytesMut, id: u32) -> Result<bool> {
    let wanted = format!("\"id\":{id}");
    loop {
        while let Some(header) = parse_frame(buf) {
            let payload = buf[header.header_len..header.header_len + header.payload_len].to_vec();
            buf.advance(header.header_len + header.payload_len);
            if header.opcode == 0x8 {
                bail!(
                    "closed by the server: {}",
                    String::from_utf8_lossy(payload.get(2..).unwrap_or_default())
                );
            }
            let mut outcome = None;
            for_each_message(Protocol::Json, &payload, |message| {
                if message.windows(wanted.len()).any(|w| w == wanted.as_bytes()) {
                    outcome = Some(!is_error_reply(Protocol::Json, message));
                }
            });
            if let Some(ok) = outcome {
                return Ok(ok);
            }
        }
        if stream.read_buf(buf).await? == 0 {
            bail!("connection closed");
        }
    }
}

/// A connect command: with a token, or tokenless with data for the connect proxy.
fn connect_command(opts: &Opts, n: u64) -> Command {
    let token = match &opts.token_secret {
        Some(secret) => spinwire::auth::mint_hs256(secret, &json!({"sub": format!("u{n}")})),
        None => String::new(),
    };
    let data = Bytes::from(format!(r#"{{"user":"u{n}"}}"#));
    let request = ConnectRequest { token, data, ..Default::default() };
    Command { id: 1, connect: Some(request), ..Default::default() }
}

/// One connect, from TCP connect to the connect reply. Each worker connects from its own
/// loopback address (`127.0.1.<worker + 1>`): one shared address runs out of ephemeral ports in
/// a 5 s run and reuses them out of TIME_WAIT, which put kernel stalls into the connect p99.
async fn one_connect(opts: &Opts, worker: usize, n: u64) -> Result<bool> {
    let source = std::net::Ipv4Addr::new(127, 0, 1, (worker % 250 + 1) as u8);
    let (mut stream, mut buf) =
        ws_connect_from(&opts.addr, Some(source.into()), "/connection/websocket", Protocol::Json).await?;
    send_command(&mut stream, &connect_command(opts, n)).await?;
    await_reply(&mut stream, &mut buf, 1).await
}

async fn connect(opts: Opts) -> Result<serde_json::Value> {
    let opts = Rc::new(opts);
    let tally = Tally::new();
    let server_cpu = CpuSpan::start(opts.server_pid);
    let started = Instant::now();
    let deadline = started + opts.duration;
    let mut workers = Vec::new();
    for worker in 0..opts.conns {
        let (opts, tally) = (opts.clone(), tally.clone());
        workers.push(spawn_local(async move {
            let mut n = worker as u64 * 1_000_000;
            while Instant::now() < deadline {
                let began = Instant::now();
                match one_connect(&opts, worker, n).await {
                    Ok(true) => tally.record(began),
                    _ => tally.failed.set(tally.failed.get() + 1),
                }
                n += 1;
            }
        }));
    }
    for worker in workers {
        worker.await?;
    }
    Ok(tally.report("proxy_connect", &opts, started.elapsed(), server_cpu.elapsed()))
}

async fn rpc(opts: Opts) -> Result<serde_json::Value> {
    let opts = Rc::new(opts);
    let tally = Tally::new();
    let mut sockets = Vec::new();
    for n in 0..opts.conns {
        let (mut stream, mut buf) = ws_connect(&opts.addr, "/connection/websocket", Protocol::Json).await?;
        send_command(&mut stream, &connect_command(&opts, n as u64)).await?;
        if !await_reply(&mut stream, &mut buf, 1).await? {
            bail!("connect {n} was refused");
        }
        sockets.push((stream, buf));
    }
    let server_cpu = CpuSpan::start(opts.server_pid);
    let started = Instant::now();
    let deadline = started + opts.duration;
    let mut workers = Vec::new();
    for (mut stream, mut buf) in sockets {
        let tally = tally.clone();
        workers.push(spawn_local(async move {
            let mut id = 2;
            while Instant::now() < deadline {
                let began = Instant::now();
                let rpc = RpcRequest { method: "bench".into(), data: Bytes::from_static(b"{}") };
                let command = Command { id, rpc: Some(rpc), ..Default::default() };
                let ok = match send_command(&mut stream, &command).await {
                    Ok(()) => await_reply(&mut stream, &mut buf, id).await.unwrap_or(false),
                    Err(_) => false,
                };
                if ok {
                    tally.record(began)
                } else {
                    tally.failed.set(tally.failed.get() + 1)
                }
                id += 1;
            }
        }));
    }
    for worker in workers {
        worker.await?;
    }
    Ok(tally.report("proxy_rpc", &opts, started.elapsed(), server_cpu.elapsed()))
}
