//! `nats-server` on a free loopback port.

use super::{Process, free_port, spawn, wait_for_port};

/// A `nats-server` killed on drop.
#[derive(Debug)]
pub(crate) struct NatsServer {
    _process: Process,
    pub port: u16,
}

impl NatsServer {
    pub(crate) async fn start() -> Option<Self> {
        let port = free_port();
        let args = ["-a", "127.0.0.1", "-p", &port.to_string()].map(str::to_owned);
        let child = spawn("nats-server", &args, "SPINWIRE_REQUIRE_NATS")?;
        let process = Process { child, dir: None };
        wait_for_port(port, "nats-server").await;
        Some(Self { _process: process, port })
    }

    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}
