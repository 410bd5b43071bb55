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
        Self::start_with(&[], None).await
    }

    /// A server that requires TLS with `cert_pem`/`key_pem` (written to its scratch directory).
    pub(crate) async fn start_tls(cert_pem: &str, key_pem: &str) -> Option<Self> {
        let dir = std::env::temp_dir().join(format!("spinwire-nats-{}", free_port()));
        std::fs::create_dir_all(&dir).ok()?;
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, cert_pem).ok()?;
        std::fs::write(&key, key_pem).ok()?;
        let args = ["--tls", "--tlscert", &cert.to_string_lossy(), "--tlskey", &key.to_string_lossy()]
            .map(|arg| arg.to_owned());
        Self::start_with(&args, Some(dir)).await
    }

    async fn start_with(extra: &[String], dir: Option<std::path::PathBuf>) -> Option<Self> {
        let port = free_port();
        let mut args = ["-a", "127.0.0.1", "-p", &port.to_string()].map(str::to_owned).to_vec();
        args.extend_from_slice(extra);
        let child = spawn("nats-server", &args, "SPINWIRE_REQUIRE_NATS")?;
        let process = Process { child, dir };
        wait_for_port(port, "nats-server").await;
        Some(Self { _process: process, port })
    }

    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}
