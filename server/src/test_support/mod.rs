//! Test-only harnesses: real `redis-server`, `redis-sentinel`, `nats-server` and PostgreSQL
//! processes on free loopback ports, each stopped (and its files removed) on drop.
//!
//! Without the binaries the harnesses return `None` after saying so, unless the run requires
//! them: `SPINWIRE_REQUIRE_REDIS=1` (set by `tests/run-all.sh`) makes a missing `redis-server`
//! or `redis-sentinel` a failure, `SPINWIRE_REQUIRE_NATS=1` a missing `nats-server`,
//! `SPINWIRE_REQUIRE_POSTGRES=1` a missing PostgreSQL, so CI can
//! never skip them silently.

mod nats;
mod postgres;
mod redis;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub(crate) use nats::NatsServer;
pub(crate) use postgres::PostgresServer;
pub(crate) use redis::{RedisCluster, RedisSentinel, RedisServer};

/// A port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A fresh scratch directory for one server's files.
fn scratch_dir(kind: &str, port: u16) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("spinwire-{kind}-{port}-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts `program` (its stderr goes to the test's, to show why a server failed), or returns
/// `None` (after saying so) when it is not installed and the run
/// does not require it (`required_by` names the variable that would).
fn spawn(program: &str, args: &[String], required_by: &str) -> Option<Child> {
    let required = std::env::var(required_by).is_ok_and(|v| v == "1");
    match Command::new(program).args(args).stdout(Stdio::null()).spawn() {
        Ok(child) => Some(child),
        Err(error) if !required => {
            eprintln!("skipping: {program} not available ({error}); install it or run tests/run-all.sh");
            None
        }
        Err(error) => panic!("{program} required ({required_by}=1) but not started: {error}"),
    }
}

/// Waits (up to 10 s) until something accepts connections on `port`.
async fn wait_for_port(port: u16, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "{what} did not start on {port}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `redis-cli -p <port> <args…>`'s output.
fn redis_cli(port: u16, args: &[&str]) -> String {
    let output =
        Command::new("redis-cli").arg("-p").arg(port.to_string()).args(args).output().expect("redis-cli");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A child process killed on drop, with its scratch directory removed.
#[derive(Debug)]
struct Process {
    child: Child,
    dir: Option<PathBuf>,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
