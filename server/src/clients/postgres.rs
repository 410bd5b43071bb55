//! Connections to PostgreSQL: the pool every query borrows from, and the dedicated connection
//! that LISTENs for notifications (the map broker's stream, the outbox consumer's partitions). TLS goes through rustls (ring) like every other
//! outgoing connection, on when `tls.enabled` or the DSN says `sslmode=require`.

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::StreamExt;
use tokio_postgres::config::SslMode;
use tokio_postgres::{AsyncMessage, Config, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::Tls;

/// How long opening a connection, or waiting for a free one, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to connect and how: the parsed DSN plus the TLS connector it needs (if any).
#[derive(Clone)]
pub struct Target {
    config: Config,
    tls: Option<MakeRustlsConnect>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("hosts", &self.config.get_hosts()).finish_non_exhaustive()
    }
}

impl Target {
    /// Parses `dsn` (URL or key=value form); `key` names it in errors.
    pub fn new(key: &str, dsn: &str, tls: &Tls, tls_key: &str) -> Result<Self, String> {
        let mut config = Config::from_str(dsn).map_err(|e| format!("{key}: not a PostgreSQL DSN: {e}"))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("spinwire");
        }
        // `sslmode=prefer` (the default) stays plaintext unless `tls` is on; `require` verifies
        // the server against the system's roots (or `tls.server_ca_pem`), stricter than libpq.
        let tls = if tls.enabled || config.get_ssl_mode() == SslMode::Require {
            config.ssl_mode(SslMode::Require);
            let client = crate::tls::client_config(tls_key, tls).map_err(|e| format!("{e:#}"))?;
            Some(MakeRustlsConnect::new(client))
        } else {
            config.ssl_mode(SslMode::Disable);
            None
        };
        Ok(Self { config, tls })
    }

    /// A pool of at most `size` connections.
    pub fn pool(&self, size: usize) -> Result<Pool, String> {
        let manager_config = ManagerConfig { recycling_method: RecyclingMethod::Fast };
        let manager = match &self.tls {
            Some(tls) => Manager::from_config(self.config.clone(), tls.clone(), manager_config),
            None => Manager::from_config(self.config.clone(), NoTls, manager_config),
        };
        Pool::builder(manager)
            .max_size(size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| format!("postgres pool: {e}"))
    }

    /// LISTENs on `channel` and calls `wake` with every notification's payload (and once with
    /// `None` when LISTEN took effect) until the connection fails (the error is returned; the
    /// caller reconnects).
    pub async fn listen(&self, channel: &str, wake: &Wake<'_>) -> Result<(), String> {
        match &self.tls {
            Some(tls) => {
                let (client, connection) =
                    self.config.connect(tls.clone()).await.map_err(|e| format!("connect: {e}"))?;
                follow(client, connection, channel, wake).await
            }
            None => {
                let (client, connection) =
                    self.config.connect(NoTls).await.map_err(|e| format!("connect: {e}"))?;
                follow(client, connection, channel, wake).await
            }
        }
    }
}

/// What a LISTEN connection calls: with a notification's payload, or `None` for "anything".
pub type Wake<'a> = dyn Fn(Option<&str>) + Sync + 'a;

async fn follow<S, T>(
    client: tokio_postgres::Client,
    mut connection: tokio_postgres::Connection<S, T>,
    channel: &str,
    wake: &Wake<'_>,
) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    // The LISTEN reply comes back through the connection, so drive both at once.
    let statement = format!("LISTEN {channel}");
    let listen = client.batch_execute(&statement);
    tokio::pin!(listen);
    let mut listening = false;
    loop {
        tokio::select! {
            result = &mut listen, if !listening => {
                result.map_err(|e| format!("LISTEN: {e}"))?;
                listening = true;
                wake(None); // anything written before LISTEN took effect
            }
            message = messages.next() => match message {
                Some(Ok(AsyncMessage::Notification(note))) => wake(Some(note.payload())),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("listen connection: {e}")),
                None => return Err("listen connection closed".into()),
            },
        }
    }
}
