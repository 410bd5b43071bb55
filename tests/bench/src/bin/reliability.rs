//! Reliability scenarios against a running server (`tests/bench/run.sh reliability` starts it):
//!
//! * `storm` (R13): `--clients` WebSocket clients connect at once against
//!   `client.connection_rate_limit`; a refused upgrade (503) is retried after a jittered
//!   backoff, as the SDKs do. The limit is Centrifugo's token bucket (a burst of the limit,
//!   then one connection per second: its code, not its documentation's "per second"), so the
//!   prediction is (clients - limit) s + 5 s. Reports the 503s, the time until every client is
//!   connected and subscribed, and the server's peak RSS; fails past the prediction.
//! * `soak` (R14): `--seconds` of connect/disconnect churn with subscribe, presence and
//!   join/leave, plus API publishes; then every client leaves. Reports RSS every few seconds
//!   and fails unless open descriptors and tokio tasks return to their baseline.
//! * `churn` (R2): `--clients` subscribers of one recoverable channel while the API publishes
//!   `--rate` per second for `--seconds`; every 5 s a random 10 % drop their TCP connection and
//!   come back after 0–10 s (less when the rate would carry them past
//!   `recovery_max_publication_limit`), resubscribing with their offset and epoch. Every
//!   resubscribe must be recovered and every client must end with every publication once, in
//!   order (duplicates are counted); one more client stays away for 301 publications and must
//!   be told `recovered: false` (limit 300). Reports recovery latency and sizes.
//!
//! Prints one JSON line of figures (for RESULTS and the reliability results file).

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;
use spinwire_bench::{
    Protocol, encode_frame, process_cpu_seconds, process_rss_bytes, setup_frame, ws_connect,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::spawn_local;

// Its own file, in a folder cargo does not take for a binary.
#[path = "reliability/churn.rs"]
mod churn;

struct Opts {
    addr: String,
    secret: String,
    api_key: String,
    server_pid: u32,
    clients: usize,
    rate_limit: f64,
    seconds: u64,
    /// Publications per second (churn).
    rate: f64,
}

fn parse() -> Result<(String, Opts)> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let scenario = args.first().cloned().context("usage: reliability storm|soak [--option value]…")?;
    let get = |name: &str, default: &str| {
        args.windows(2).find(|w| w[0] == format!("--{name}")).map_or(default.to_owned(), |w| w[1].clone())
    };
    Ok((
        scenario,
        Opts {
            addr: get("addr", "127.0.0.1:8000"),
            secret: get("secret", "bench-secret"),
            api_key: get("api-key", "bench-key"),
            server_pid: get("server-pid", "0").parse()?,
            clients: get("clients", "1000").parse()?,
            rate_limit: get("rate-limit", "500").parse()?,
            seconds: get("seconds", "60").parse()?,
            rate: get("rate", "20").parse()?,
        },
    ))
}

fn token(secret: &str, user: &str) -> String {
    spinwire::auth::mint_hs256(secret, &json!({"sub": user}))
}

/// Connects and subscribes one client; `Err` carries whether the upgrade was refused with 503.
async fn open_client(opts: &Opts, user: &str, channel: &str) -> Result<TcpStream, bool> {
    let (mut stream, _) = match ws_connect(&opts.addr, "/connection/websocket", Protocol::Json).await {
        Ok(connected) => connected,
        Err(error) => {
            if std::env::var_os("RELIABILITY_DEBUG").is_some() {
                eprintln!("open: {error:#}");
            }
            return Err(error.to_string().contains(" 503 "));
        }
    };
    let mut frame = Vec::new();
    encode_frame(
        &mut frame,
        1,
        &setup_frame(Protocol::Json, &token(&opts.secret, user), &[channel.to_owned()]),
    );
    stream.write_all(&frame).await.map_err(|_| false)?;
    // Both replies (connect, subscribe) arrive within a few frames; read until the subscribe's.
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    const SUBSCRIBED: &[u8] = b"\"id\":2,";
    while !seen.windows(SUBSCRIBED.len()).any(|w| w == SUBSCRIBED) {
        let read = tokio::time::timeout_at(deadline.into(), stream.read(&mut buffer)).await;
        match read {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buffer[..n]),
            other => {
                if std::env::var_os("RELIABILITY_DEBUG").is_some() {
                    eprintln!("reply: {other:?} after {:?}", String::from_utf8_lossy(&seen));
                }
                return Err(false);
            }
        }
    }
    Ok(stream)
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count())
}

/// The server's tokio task count, from the `info` API's metrics.
async fn alive_tasks(opts: &Opts) -> Result<f64> {
    let body = api_call(opts, "info", "{}").await?;
    let value: serde_json::Value = serde_json::from_str(&body)?;
    value["result"]["nodes"][0]["metrics"]["items"]["spinwire_runtime_alive_tasks"]
        .as_f64()
        .context("no spinwire_runtime_alive_tasks in info")
}

async fn api_call(opts: &Opts, method: &str, body: &str) -> Result<String> {
    let mut stream = TcpStream::connect(&opts.addr).await?;
    let request = format!(
        "POST /api/{method} HTTP/1.1\r\nHost: x\r\nX-API-Key: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        opts.api_key,
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    Ok(answer.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default())
}

/// R13: everyone at once against the rate limit.
async fn storm(opts: Rc<Opts>) -> Result<serde_json::Value> {
    let refused = Rc::new(Cell::new(0u64));
    let peak_rss = Rc::new(Cell::new(process_rss_bytes(opts.server_pid).unwrap_or(0)));
    let cpu_before = process_cpu_seconds(opts.server_pid).unwrap_or(0.0);
    let started = Instant::now();
    let sampler = {
        let (opts, peak_rss) = (opts.clone(), peak_rss.clone());
        spawn_local(async move {
            loop {
                peak_rss.set(peak_rss.get().max(process_rss_bytes(opts.server_pid).unwrap_or(0)));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut tasks = Vec::new();
    for i in 0..opts.clients {
        let (opts, refused) = (opts.clone(), refused.clone());
        tasks.push(spawn_local(async move {
            let mut backoff_ms = 200u64;
            loop {
                match open_client(&opts, &format!("storm{i}"), "bench:storm").await {
                    Ok(stream) => return Ok(stream),
                    Err(was_503) => {
                        if was_503 {
                            refused.set(refused.get() + 1);
                        }
                        // Jittered, growing backoff (the SDKs start around 0.5 s).
                        let jitter = (i as u64 * 7919 + backoff_ms) % backoff_ms.max(1);
                        tokio::time::sleep(Duration::from_millis(backoff_ms / 2 + jitter)).await;
                        backoff_ms = (backoff_ms * 2).min(2000);
                        if started.elapsed() > Duration::from_secs(120) {
                            bail!("client {i} never got in");
                        }
                    }
                }
            }
        }));
    }
    let mut connected = Vec::new();
    for task in tasks {
        connected.push(task.await??);
    }
    let all_in = started.elapsed().as_secs_f64();
    sampler.abort();
    let predicted = (opts.clients as f64 - opts.rate_limit).max(0.0) + 5.0;
    let figures = json!({
        "scenario": "R13 reconnect storm", "clients": opts.clients, "connection_rate_limit": opts.rate_limit,
        "refused_503": refused.get(), "seconds_to_all_connected": all_in, "predicted_seconds": predicted,
        "server_peak_rss_mb": peak_rss.get() as f64 / 1048576.0,
        "server_cpu_seconds": process_cpu_seconds(opts.server_pid).unwrap_or(0.0) - cpu_before,
    });
    drop(connected);
    if all_in > predicted {
        bail!("storm took {all_in:.1} s, more than the predicted {predicted:.1} s: {figures}");
    }
    if refused.get() == 0 && opts.clients as f64 > opts.rate_limit {
        bail!("no 503 at all: the rate limit did not act: {figures}");
    }
    Ok(figures)
}

/// R14: churn, then everyone leaves; descriptors and tasks must come back to the baseline.
async fn soak(opts: Rc<Opts>) -> Result<serde_json::Value> {
    let (fds_before, tasks_before) = (fd_count(opts.server_pid), alive_tasks(&opts).await?);
    let rss_start = process_rss_bytes(opts.server_pid).unwrap_or(0);
    let started = Instant::now();
    let mut clients: std::collections::VecDeque<TcpStream> = Default::default();
    let mut rss_curve = Vec::new();
    let (mut opened, mut published, mut n) = (0u64, 0u64, 0u64);
    while started.elapsed() < Duration::from_secs(opts.seconds) {
        n += 1;
        // 50 connects per second, 200 open at most: the oldest leaves for each new one.
        let channel = format!("soak:room{}", n % 20);
        if let Ok(stream) = open_client(&opts, &format!("soak{}", n % 500), &channel).await {
            clients.push_back(stream);
            opened += 1;
        }
        if clients.len() > 200 {
            clients.pop_front();
        }
        if n % 2 == 0 {
            let body = json!({"channel": channel, "data": {"n": n}}).to_string();
            if api_call(&opts, "publish", &body).await.is_ok() {
                published += 1;
            }
        }
        if n % 250 == 0 {
            rss_curve.push(process_rss_bytes(opts.server_pid).unwrap_or(0) / 1048576);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    clients.clear();
    let left = Instant::now();
    let (mut fds, mut tasks) = (usize::MAX, f64::MAX);
    while left.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        (fds, tasks) = (fd_count(opts.server_pid), alive_tasks(&opts).await?);
        if fds <= fds_before + 2 && tasks <= tasks_before + 2.0 {
            break;
        }
    }
    let figures = json!({
        "scenario": "R14 soak", "seconds": opts.seconds, "connects": opened, "publishes": published,
        "rss_mb_start": rss_start / 1048576, "rss_mb_curve": rss_curve,
        "rss_mb_end": process_rss_bytes(opts.server_pid).unwrap_or(0) / 1048576,
        "fds_before": fds_before, "fds_after": fds, "tasks_before": tasks_before, "tasks_after": tasks,
        "seconds_to_baseline": left.elapsed().as_secs_f64(),
    });
    if fds > fds_before + 2 || tasks > tasks_before + 2.0 {
        bail!("descriptors or tasks did not come back to the baseline: {figures}");
    }
    Ok(figures)
}

fn main() -> Result<()> {
    let (scenario, opts) = parse()?;
    let opts = Rc::new(opts);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    let figures = local.block_on(&runtime, async {
        match scenario.as_str() {
            "storm" => storm(opts).await,
            "soak" => soak(opts).await,
            "churn" => churn::run(opts).await,
            other => bail!("unknown scenario {other:?}"),
        }
    })?;
    println!("{figures}");
    Ok(())
}
