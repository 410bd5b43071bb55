//! `redis-server` in its three shapes the Redis engine supports: one server, a Cluster of
//! masters, and a master watched by a Sentinel.

use std::time::Duration;

use super::{Process, free_port, redis_cli, scratch_dir, spawn, wait_for_port};

const REQUIRED_BY: &str = "SPINWIRE_REQUIRE_REDIS";

/// A `redis-server` on a free loopback port, killed on drop.
#[derive(Debug)]
pub(crate) struct RedisServer {
    _process: Process,
    pub port: u16,
}

impl RedisServer {
    /// Starts one without persistence.
    pub(crate) async fn start() -> Option<Self> {
        Self::start_with(&[]).await
    }

    /// Same, with extra `redis-server` arguments; the server's files go to a fresh directory.
    pub(crate) async fn start_with(extra: &[&str]) -> Option<Self> {
        Self::start_on(free_port(), extra).await
    }

    /// Starts one on `port` (to restart a server where its clients expect it).
    pub(crate) async fn start_on(port: u16, extra: &[&str]) -> Option<Self> {
        let dir = scratch_dir("redis", port);
        let mut args: Vec<String> =
            ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        args.extend(["--dir".to_owned(), dir.display().to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = spawn("redis-server", &args, REQUIRED_BY)?;
        let process = Process { child, dir: Some(dir) };
        wait_for_port(port, "redis-server").await;
        Some(Self { _process: process, port })
    }

    pub(crate) fn address(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// A three-master Redis Cluster (no replicas) on free loopback ports.
#[derive(Debug)]
pub(crate) struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub(crate) async fn start() -> Option<Self> {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let node =
                RedisServer::start_with(&["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]);
            nodes.push(node.await?);
        }
        let mut create = std::process::Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let output = create.args(["--cluster-replicas", "0", "--cluster-yes"]).output().expect("redis-cli");
        assert!(output.status.success(), "cluster create: {}", String::from_utf8_lossy(&output.stdout));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if nodes
                .iter()
                .all(|node| redis_cli(node.port, &["cluster", "info"]).contains("cluster_state:ok"))
            {
                return Some(Self { nodes });
            }
            assert!(tokio::time::Instant::now() < deadline, "cluster did not reach cluster_state:ok");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Seed addresses for `cluster_address`.
    pub(crate) fn addresses(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::address).collect()
    }
}

/// A master and one `redis-sentinel` (quorum 1) watching it as `mymaster`.
#[derive(Debug)]
pub(crate) struct RedisSentinel {
    // Fields drop in order: the sentinel goes before its master.
    _sentinel: Process,
    pub sentinel_port: u16,
    _master: RedisServer,
}

impl RedisSentinel {
    pub const MASTER_NAME: &'static str = "mymaster";

    pub(crate) async fn start() -> Option<Self> {
        let master = RedisServer::start().await?;
        let port = free_port();
        let dir = scratch_dir("sentinel", port);
        let conf = dir.join("sentinel.conf");
        let settings = [
            format!("port {port}"),
            "bind 127.0.0.1".to_owned(),
            format!("dir {}", dir.display()),
            format!("sentinel monitor {} 127.0.0.1 {} 1", Self::MASTER_NAME, master.port),
            format!("sentinel down-after-milliseconds {} 1000", Self::MASTER_NAME),
        ];
        std::fs::write(&conf, settings.join("\n") + "\n").unwrap();
        let child = spawn("redis-sentinel", &[conf.display().to_string()], REQUIRED_BY)?;
        let sentinel = Process { child, dir: Some(dir) };
        wait_for_port(port, "redis-sentinel").await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let wanted = master.port.to_string();
        loop {
            let answer = redis_cli(port, &["sentinel", "get-master-addr-by-name", Self::MASTER_NAME]);
            if answer.lines().nth(1) == Some(wanted.as_str()) {
                return Some(Self { _sentinel: sentinel, sentinel_port: port, _master: master });
            }
            assert!(tokio::time::Instant::now() < deadline, "sentinel does not know its master: {answer:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The address for `sentinel_address`.
    pub(crate) fn sentinel_address(&self) -> String {
        format!("127.0.0.1:{}", self.sentinel_port)
    }
}
