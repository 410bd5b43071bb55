//! R2, recovery under churn (see the binary's docs).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use spinwire_bench::{Protocol, encode_frame, opcode, parse_frame, ws_connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::spawn_local;

use super::{Opts, api_call, token};

const CHANNEL: &str = "churn:stream";
/// `client.recovery_max_publication_limit` in the reliability config.
const RECOVERY_LIMIT: u64 = 300;

/// What one client saw of the stream, across its reconnects.
#[derive(Debug, Default)]
struct Seen {
    /// Got a subscribe reply at least once (the position is then known).
    subscribed: bool,
    offsets: Vec<u64>,
    epoch: String,
    duplicates: u64,
    recovered: u64,
    not_recovered: u64,
    /// Milliseconds from starting to reconnect to the subscribe reply, per recovery.
    latencies_ms: Vec<f64>,
    /// Publications each recovery brought back.
    sizes: Vec<usize>,
}

impl Seen {
    fn last(&self) -> u64 {
        self.offsets.last().copied().unwrap_or(0)
    }

    fn take(&mut self, offset: u64) {
        if offset <= self.last() {
            self.duplicates += 1;
        } else {
            self.offsets.push(offset);
        }
    }
}

/// One client: `leave` asks it to drop its connection now (it comes back after `away`).
#[derive(Default)]
struct Subscriber {
    seen: RefCell<Seen>,
    /// Subscribed on the current connection (only such clients are picked to leave, so an
    /// absence is never stretched past the recovery limit).
    live: Cell<bool>,
    leave: Cell<Option<Duration>>,
    done: Cell<bool>,
}

/// A small deterministic generator (xorshift) for who leaves and for how long.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

pub async fn run(opts: Rc<Opts>) -> Result<Value> {
    let published = Rc::new(Cell::new(0u64));
    let stop = Rc::new(Cell::new(false));
    // Away at most as long as keeps a client within the recovery limit (with a margin).
    let max_away = Duration::from_secs_f64((10.0f64).min((RECOVERY_LIMIT - 60) as f64 / opts.rate));
    let subscribers: Vec<Rc<Subscriber>> =
        (0..opts.clients).map(|_| Rc::new(Subscriber::default())).collect();
    let mut tasks = Vec::new();
    for (i, subscriber) in subscribers.iter().enumerate() {
        tasks.push(spawn_local(subscribe_loop(opts.clone(), format!("churn{i}"), subscriber.clone())));
    }
    let publisher = spawn_local(publish_loop(opts.clone(), published.clone(), stop.clone()));
    wait_subscribed(&subscribers).await?;
    let boundary = spawn_local(boundary_client(opts.clone(), published.clone()));
    let started = Instant::now();
    let mut dice = Dice(0x2545_f491_4f6c_dd1d);
    while started.elapsed() < Duration::from_secs(opts.seconds) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        for subscriber in &subscribers {
            if subscriber.live.get() && dice.below(10) == 0 {
                let away = max_away.mul_f64(dice.below(1000) as f64 / 1000.0);
                subscriber.leave.set(Some(away));
            }
        }
    }
    // Stopped between publishes, never during one: every publication the server made is
    // counted in `published`.
    stop.set(true);
    publisher.await??;
    let boundary_recovered = boundary.await??;
    // Everyone back and caught up: then stop.
    settle(&subscribers, published.get()).await;
    for subscriber in &subscribers {
        subscriber.done.set(true);
    }
    for task in tasks {
        task.await??;
    }
    judge(&opts, &subscribers, published.get(), boundary_recovered, max_away)
}

/// Waits (60 s at most) until every client got its first subscribe reply.
async fn wait_subscribed(subscribers: &[Rc<Subscriber>]) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(60);
    while subscribers.iter().any(|s| !s.seen.borrow().subscribed) {
        if Instant::now() > until {
            bail!("not every client subscribed within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Waits (30 s at most) until every client holds the last publication.
async fn settle(subscribers: &[Rc<Subscriber>], published: u64) {
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until && subscribers.iter().any(|s| s.seen.borrow().last() < published) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn publish_loop(opts: Rc<Opts>, published: Rc<Cell<u64>>, stop: Rc<Cell<bool>>) -> Result<()> {
    let interval = Duration::from_secs_f64(1.0 / opts.rate);
    let mut next = Instant::now();
    while !stop.get() {
        let body = json!({"channel": CHANNEL, "data": {"n": published.get() + 1}}).to_string();
        let answer: Value = serde_json::from_str(&api_call(&opts, "publish", &body).await?)?;
        let offset = answer["result"]["offset"].as_u64().context("publish without an offset")?;
        published.set(offset);
        next += interval;
        tokio::time::sleep_until(next.into()).await;
    }
    Ok(())
}

/// Connects and subscribes (recovering from `seen` when it has a position) and reads until
/// told to leave or finish; then leaves, waits, and comes back.
async fn subscribe_loop(opts: Rc<Opts>, user: String, me: Rc<Subscriber>) -> Result<()> {
    loop {
        let since = {
            let seen = me.seen.borrow();
            seen.subscribed.then(|| (seen.last(), seen.epoch.clone()))
        };
        let started = Instant::now();
        let mut stream = connect(&opts, &user, since.as_ref()).await?;
        read_until_told(&mut stream, &me, since.is_some(), started).await?;
        me.live.set(false);
        drop(stream);
        if me.done.get() {
            return Ok(());
        }
        if let Some(away) = me.leave.take() {
            tokio::time::sleep(away).await;
        }
    }
}

fn subscribe_command(since: Option<&(u64, String)>) -> Value {
    match since {
        Some((offset, epoch)) => {
            json!({"id": 2, "subscribe": {"channel": CHANNEL, "recover": true, "offset": offset, "epoch": epoch}})
        }
        None => json!({"id": 2, "subscribe": {"channel": CHANNEL}}),
    }
}

async fn connect(opts: &Opts, user: &str, since: Option<&(u64, String)>) -> Result<TcpStream> {
    let (mut stream, _) = ws_connect(&opts.addr, "/connection/websocket", Protocol::Json).await?;
    let connect = json!({"id": 1, "connect": {"token": token(&opts.secret, user)}});
    let payload = format!("{connect}\n{}", subscribe_command(since));
    let mut frame = Vec::new();
    encode_frame(&mut frame, opcode::TEXT, payload.as_bytes());
    stream.write_all(&frame).await?;
    Ok(stream)
}

/// Reads frames, answering pings and recording publications, until the client is told to
/// leave (or the run is done).
async fn read_until_told(
    stream: &mut TcpStream,
    me: &Subscriber,
    recovering: bool,
    started: Instant,
) -> Result<()> {
    let mut buffer = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        if me.done.get() || me.leave.get().is_some() {
            return Ok(());
        }
        let read = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut chunk)).await;
        match read {
            Err(_) => continue,
            Ok(Ok(0)) => bail!("the server closed the connection"),
            Ok(Ok(n)) => buffer.extend_from_slice(&chunk[..n]),
            Ok(Err(error)) => return Err(error.into()),
        }
        while let Some(header) = parse_frame(&buffer) {
            let end = header.header_len + header.payload_len;
            if header.opcode == opcode::CLOSE {
                bail!("closed by the server: {:?}", String::from_utf8_lossy(&buffer[header.header_len..end]));
            }
            for message in buffer[header.header_len..end].split(|b| *b == b'\n') {
                if message == b"{}" {
                    let mut pong = Vec::new();
                    encode_frame(&mut pong, opcode::TEXT, b"{}");
                    stream.write_all(&pong).await?;
                } else if !message.is_empty() {
                    take_message(me, serde_json::from_slice(message)?, recovering, started)?;
                }
            }
            buffer.drain(..end);
        }
    }
}

fn take_message(me: &Subscriber, message: Value, recovering: bool, started: Instant) -> Result<()> {
    let mut seen = me.seen.borrow_mut();
    if let Some(error) = message.get("error") {
        bail!("error reply: {error}");
    }
    if message["id"] == 2 {
        me.live.set(true);
        let reply = &message["subscribe"];
        let publications = reply["publications"].as_array().cloned().unwrap_or_default();
        if recovering {
            if reply["recovered"] == true {
                seen.recovered += 1;
            } else {
                seen.not_recovered += 1;
            }
            seen.latencies_ms.push(started.elapsed().as_secs_f64() * 1000.0);
            seen.sizes.push(publications.len());
        }
        seen.subscribed = true;
        seen.epoch = reply["epoch"].as_str().unwrap_or_default().to_owned();
        for publication in publications {
            seen.take(publication["offset"].as_u64().unwrap_or(0));
        }
        if !recovering && seen.offsets.is_empty() {
            // A first subscribe starts from the stream's top.
            let top = reply["offset"].as_u64().unwrap_or(0);
            seen.offsets.extend(1..=top);
        }
    } else if let Some(offset) = message["push"]["pub"]["offset"].as_u64() {
        // A new stream's first publication names its epoch (the SDKs adopt it).
        if let Some(epoch) = message["push"]["pub"]["epoch"].as_str().filter(|e| !e.is_empty()) {
            seen.epoch = epoch.to_owned();
        }
        seen.take(offset);
    }
    Ok(())
}

/// The boundary case: a client away for more than the recovery limit is told it was not
/// recovered. Returns the `recovered` flag it got.
async fn boundary_client(opts: Rc<Opts>, published: Rc<Cell<u64>>) -> Result<bool> {
    let me = Rc::new(Subscriber::default());
    let reader = spawn_local(subscribe_loop(opts.clone(), "boundary".into(), me.clone()));
    while !me.seen.borrow().subscribed || me.seen.borrow().last() < 5 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    me.done.set(true);
    reader.await??;
    let (left_at, epoch) = {
        let seen = me.seen.borrow();
        (seen.last(), seen.epoch.clone())
    };
    while published.get() < left_at + RECOVERY_LIMIT + 1 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut stream = connect(&opts, "boundary", Some(&(left_at, epoch))).await?;
    let reply = subscribe_reply(&mut stream).await?;
    Ok(reply["subscribe"]["recovered"] == true)
}

/// Reads until the subscribe reply (id 2), 10 s at most.
async fn subscribe_reply(stream: &mut TcpStream) -> Result<Value> {
    let mut buffer = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let n = tokio::time::timeout_at(until.into(), stream.read(&mut chunk))
            .await
            .context("no subscribe reply")??;
        if n == 0 {
            bail!("closed before the subscribe reply");
        }
        buffer.extend_from_slice(&chunk[..n]);
        while let Some(header) = parse_frame(&buffer) {
            let end = header.header_len + header.payload_len;
            for message in buffer[header.header_len..end].split(|b| *b == b'\n') {
                if let Ok(message) = serde_json::from_slice::<Value>(message)
                    && message["id"] == 2
                {
                    return Ok(message);
                }
            }
            buffer.drain(..end);
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn judge(
    opts: &Opts,
    subscribers: &[Rc<Subscriber>],
    published: u64,
    boundary_recovered: bool,
    max_away: Duration,
) -> Result<Value> {
    let expected: Vec<u64> = (1..=published).collect();
    let (mut recovered, mut not_recovered, mut duplicates, mut gappy) = (0, 0, 0, 0);
    let mut latencies = Vec::new();
    let mut histogram = [0u64; 5];
    for subscriber in subscribers {
        let seen = subscriber.seen.borrow();
        recovered += seen.recovered;
        not_recovered += seen.not_recovered;
        duplicates += seen.duplicates;
        gappy += u64::from(seen.offsets != expected);
        latencies.extend_from_slice(&seen.latencies_ms);
        for size in &seen.sizes {
            histogram[match size {
                0 => 0,
                1..=10 => 1,
                11..=50 => 2,
                51..=100 => 3,
                _ => 4,
            }] += 1;
        }
    }
    latencies.sort_by(f64::total_cmp);
    let figures = json!({
        "scenario": "R2 recovery under churn", "clients": opts.clients, "seconds": opts.seconds,
        "publications_per_second": opts.rate, "publications": published,
        "max_away_seconds": max_away.as_secs_f64(), "resubscribes": recovered + not_recovered,
        "recovered_true": recovered, "recovered_false": not_recovered, "duplicates": duplicates,
        "clients_with_gaps": gappy,
        "recovery_latency_ms_p50": percentile(&latencies, 0.5), "recovery_latency_ms_p99": percentile(&latencies, 0.99),
        "recovered_publications_histogram": {"0": histogram[0], "1-10": histogram[1], "11-50": histogram[2], "51-100": histogram[3], "101+": histogram[4]},
        "boundary_301_missed_recovered": boundary_recovered,
    });
    if not_recovered > 0 || gappy > 0 || boundary_recovered || recovered == 0 {
        bail!("R2 failed: {figures}");
    }
    Ok(figures)
}
