//! `kernel_floor`: what one small TCP write costs on this box with no server at all.
//!
//! A writer process sends one small message per `write()` to each of N loopback connections,
//! round after round, and a reader process drains them with a bare epoll loop. Nothing runs
//! around those syscalls, so the writer's CPU per write is the cost any server pays when it
//! cannot coalesce: on loopback it includes the receiver's TCP path (and the wake-up of the
//! reader), which runs in the sender's context. RESULTS.md sets Spinwire's unbatched CPU per
//! delivery against it.
//!
//! ```text
//! kernel_floor read  --addr 127.0.0.1:18290 --conns 10000
//! kernel_floor write --addr 127.0.0.1:18290 --conns 10000 [--rate 25000] [--duration 6] [--payload 200]
//! ```
//! `--rate` is writes per second (paced in rounds of one write per connection; 0 = flat out).
//! The writer prints one JSON line; the reader exits once every connection has closed.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mio::{Events, Interest, Poll, Token};
use serde_json::json;
use spinwire_bench::process_cpu_seconds;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("");
    let options: HashMap<&str, &str> = args[1.min(args.len())..]
        .chunks(2)
        .filter_map(|pair| Some((pair[0].strip_prefix("--")?, pair.get(1)?.as_str())))
        .collect();
    let get = |key: &str, default: &str| options.get(key).copied().unwrap_or(default).to_owned();
    let addr = get("addr", "127.0.0.1:18290");
    let conns: usize = get("conns", "10000").parse().context("--conns")?;
    match mode {
        "read" => read(&addr, conns),
        "write" => write(
            &addr,
            conns,
            get("rate", "0").parse().context("--rate")?,
            Duration::from_secs_f64(get("duration", "6").parse().context("--duration")?),
            get("payload", "200").parse().context("--payload")?,
        ),
        _ => bail!("usage: kernel_floor read|write --addr A --conns N [--rate W --duration S --payload B]"),
    }
}

/// Accepts `conns` connections, then reads until all of them have closed. mio's epoll is
/// edge-triggered, so a ready socket is read until it would block: a message and the close
/// can arrive under one edge.
fn read(addr: &str, conns: usize) -> Result<()> {
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
    let mut poll = Poll::new()?;
    let mut streams = HashMap::with_capacity(conns);
    while streams.len() < conns {
        let (stream, _) = listener.accept()?;
        stream.set_nonblocking(true)?;
        let mut stream = mio::net::TcpStream::from_std(stream);
        let token = Token(streams.len());
        poll.registry().register(&mut stream, token, Interest::READABLE)?;
        streams.insert(token, stream);
    }
    let mut events = Events::with_capacity(256);
    let mut buf = [0u8; 4096];
    while !streams.is_empty() {
        match poll.poll(&mut events, None) {
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            other => other?,
        }
        for event in &events {
            let Some(stream) = streams.get_mut(&event.token()) else { continue };
            let open = loop {
                match stream.read(&mut buf) {
                    Ok(0) => break false,
                    Ok(_) => {}
                    Err(error) if error.kind() == ErrorKind::WouldBlock => break true,
                    Err(error) if error.kind() == ErrorKind::Interrupted => {}
                    Err(_) => break false,
                }
            };
            if !open {
                streams.remove(&event.token());
            }
        }
    }
    Ok(())
}

/// Writes one `payload`-byte message per connection per round, at `rate` writes/s (0 = flat out).
fn write(addr: &str, conns: usize, rate: f64, duration: Duration, payload: usize) -> Result<()> {
    let mut streams = Vec::with_capacity(conns);
    // The reader may still be starting: retry the first connection for a few seconds.
    let patience = Instant::now() + Duration::from_secs(5);
    let first = loop {
        match TcpStream::connect(addr) {
            Err(error) if error.kind() == ErrorKind::ConnectionRefused && Instant::now() < patience => {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => break other.with_context(|| format!("connect {addr}"))?,
        }
    };
    first.set_nodelay(true)?;
    streams.push(first);
    while streams.len() < conns {
        let stream = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        streams.push(stream);
    }
    // Let the reader register every connection before the clock starts.
    std::thread::sleep(Duration::from_millis(500));
    let message = vec![b'x'; payload];
    let round_interval = (rate > 0.0).then(|| Duration::from_secs_f64(conns as f64 / rate));
    let (started, cpu_before) = (Instant::now(), cpu_seconds());
    let mut writes = 0u64;
    let mut round = 0u32;
    loop {
        // A round starts on its schedule when paced, at once when flat out; none starts late.
        let due = round_interval.map_or_else(Instant::now, |interval| started + interval * round);
        if due >= started + duration {
            break;
        }
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        for stream in &mut streams {
            stream.write_all(&message)?;
            writes += 1;
        }
        round += 1;
    }
    // A paced run's last round ends before `duration`: its rate is over the whole schedule.
    let (elapsed, cpu) = (started.elapsed().max(duration).as_secs_f64(), cpu_seconds() - cpu_before);
    println!(
        "{}",
        json!({
            "scenario": "kernel-floor",
            "conns": conns,
            "payload": payload,
            "target_writes_per_s": rate,
            "writes_per_s": writes as f64 / elapsed,
            "writer_cpu_us_per_write": cpu / writes as f64 * 1e6,
        })
    );
    Ok(())
}

/// This process's user + system CPU time so far.
fn cpu_seconds() -> f64 {
    process_cpu_seconds(std::process::id()).unwrap_or(f64::NAN)
}
