//! Reaching one Redis: where it is (an address, or whatever Sentinel says the master is now),
//! the shared command connection, and the time limit on every call.
//!
//! Commands from every session share one multiplexed connection per shard: redis-rs pipelines
//! concurrent requests onto it, so a burst of publishes costs a few round trips, not one each.
//! A call that does not finish within `io_timeout` fails (error 100 for the client) instead of
//! waiting for Redis to come back; a broken or timed-out connection is dropped and the next
//! call dials again (asking Sentinel first), so recovery needs no supervisor task.

use crate::sync::Mutex;
use std::future::Future;
use std::time::Duration;

use redis::aio::{AsyncPushSender, ConnectionLike, MultiplexedConnection, PubSub};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, ConnectionInfo, ProtocolVersion, RedisError, RedisResult, TlsMode,
};

use crate::clients::redis::{Login, client_for, connection_info};
use crate::config::{RedisEngine, Tls};
use crate::engine::EngineError;

/// Where the shard's Redis is.
enum Target {
    Direct(Client),
    /// Resolved on every dial, so a failover moves us to the new master.
    Sentinel(tokio::sync::Mutex<SentinelClient>),
    /// Seed nodes of a Redis Cluster; redis-rs follows slots, MOVED and failovers.
    Cluster(ClusterSettings),
}

/// What it takes to build a cluster client (redis-rs's builder is not `Clone`).
struct ClusterSettings {
    nodes: Vec<ConnectionInfo>,
    username: String,
    password: String,
    tls: Option<TlsMode>,
    connect_timeout: Duration,
    io_timeout: Duration,
}

impl ClusterSettings {
    fn builder(&self, protocol: ProtocolVersion) -> ClusterClientBuilder {
        let mut builder = ClusterClientBuilder::new(self.nodes.clone())
            .connection_timeout(self.connect_timeout)
            .response_timeout(self.io_timeout)
            .use_protocol(protocol)
            // Few, fast retries: the caller's `io_timeout` is the real limit.
            .retries(3)
            .min_retry_wait(20)
            .max_retry_wait(300);
        if !self.username.is_empty() {
            builder = builder.username(&self.username);
        }
        if !self.password.is_empty() {
            builder = builder.password(&self.password);
        }
        if let Some(tls) = self.tls {
            builder = builder.tls(tls);
        }
        builder
    }
}

/// The command connection: one multiplexed connection, or a cluster connection that routes
/// each command by the slot of its first key.
#[derive(Clone)]
pub enum CommandConnection {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for CommandConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Single(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}

/// One Redis server (a shard), with its command connection.
pub struct Shard {
    target: Target,
    /// Shown in logs and errors.
    pub name: String,
    pub io_timeout: Duration,
    connect_timeout: Duration,
    current: Mutex<Option<CommandConnection>>,
    dialing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard").field("name", &self.name).finish_non_exhaustive()
    }
}

/// A Redis failure as the engine reports it.
pub fn engine_error(shard: &str, error: &RedisError) -> EngineError {
    EngineError::Internal(format!("redis {shard}: {error}"))
}

fn timeout_error(shard: &str) -> EngineError {
    EngineError::Internal(format!("redis {shard}: timed out"))
}

/// Errors after which the connection is not worth keeping: it broke, it stalled, or (after a
/// Sentinel failover) it points at a server that became a replica.
fn connection_is_spent(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || error.code() == Some("READONLY")
}

impl Shard {
    /// A shard at a fixed address.
    pub fn direct(section: &RedisEngine, address: &str, key: &str) -> Result<Self, String> {
        let info = connection_info(Login::of(section), address, &section.tls)?;
        let name = format!("{}", info.addr());
        let client = client_for(info, &section.tls, key)?;
        Ok(Self::new(Target::Direct(client), name, section))
    }

    /// A shard whose master is found through Sentinel.
    pub fn sentinel(section: &RedisEngine, key: &str) -> Result<Self, String> {
        let mut sentinels = Vec::new();
        for address in &section.sentinel_address {
            let info = connection_info(Login::default(), address, &section.sentinel_tls)?;
            sentinels.push(info.addr().clone());
        }
        let tls_mode = |tls: &Tls| if tls.insecure_skip_verify { TlsMode::Insecure } else { TlsMode::Secure };
        let mut builder = SentinelClientBuilder::new(
            sentinels,
            section.sentinel_master_name.clone(),
            SentinelServerType::Master,
        )
        .map_err(|e| format!("{key}.sentinel_address: {e}"))?
        .set_client_to_redis_protocol(ProtocolVersion::RESP2)
        .set_client_to_sentinel_protocol(ProtocolVersion::RESP2)
        .set_client_to_redis_db(section.db);
        if !section.user.is_empty() {
            builder = builder.set_client_to_redis_username(&section.user);
        }
        if !section.password.is_empty() {
            builder = builder.set_client_to_redis_password(&section.password);
        }
        if !section.sentinel_user.is_empty() {
            builder = builder.set_client_to_sentinel_username(&section.sentinel_user);
        }
        if !section.sentinel_password.is_empty() {
            builder = builder.set_client_to_sentinel_password(&section.sentinel_password);
        }
        if section.tls.enabled {
            builder = builder.set_client_to_redis_tls_mode(tls_mode(&section.tls));
        }
        if section.sentinel_tls.enabled {
            builder = builder.set_client_to_sentinel_tls_mode(tls_mode(&section.sentinel_tls));
        }
        let client = builder.build().map_err(|e| format!("{key}.sentinel_address: {e}"))?;
        let name = format!("sentinel master {:?}", section.sentinel_master_name);
        Ok(Self::new(Target::Sentinel(tokio::sync::Mutex::new(client)), name, section))
    }

    /// A Redis Cluster reached through its seed nodes.
    pub fn cluster(section: &RedisEngine, key: &str) -> Result<Self, String> {
        let mut nodes = Vec::new();
        for address in &section.cluster_address {
            nodes.push(
                connection_info(Login::of(section), address, &section.tls)
                    .map_err(|e| format!("{key}.cluster_address: {e}"))?,
            );
        }
        let mode = if section.tls.insecure_skip_verify { TlsMode::Insecure } else { TlsMode::Secure };
        let tls = section.tls.enabled.then_some(mode);
        let connect_timeout = if section.connect_timeout.0.is_zero() {
            section.io_timeout.0
        } else {
            section.connect_timeout.0
        };
        let settings = ClusterSettings {
            nodes,
            username: section.user.clone(),
            password: section.password.clone(),
            tls,
            connect_timeout,
            io_timeout: section.io_timeout.0,
        };
        // Validate the addresses now rather than on the first call.
        settings
            .builder(ProtocolVersion::RESP2)
            .build()
            .map_err(|e| format!("{key}.cluster_address: {e}"))?;
        let name = format!("cluster {}", section.cluster_address.join(","));
        Ok(Self::new(Target::Cluster(settings), name, section))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    fn new(target: Target, name: String, section: &RedisEngine) -> Self {
        Self {
            target,
            name,
            io_timeout: section.io_timeout.0,
            connect_timeout: if section.connect_timeout.0.is_zero() {
                section.io_timeout.0
            } else {
                section.connect_timeout.0
            },
            current: Mutex::new(None),
            dialing: tokio::sync::Mutex::new(()),
        }
    }

    /// A client for the current master (not for a cluster).
    async fn client(&self) -> RedisResult<Client> {
        match &self.target {
            Target::Direct(client) => Ok(client.clone()),
            Target::Sentinel(sentinel) => sentinel.lock().await.async_get_client().await,
            Target::Cluster(_) => {
                Err(RedisError::from((redis::ErrorKind::Client, "cluster has no single master")))
            }
        }
    }

    async fn dial(&self) -> RedisResult<CommandConnection> {
        if let Target::Cluster(settings) = &self.target {
            let client = settings.builder(ProtocolVersion::RESP2).build()?;
            return client.get_async_connection().await.map(CommandConnection::Cluster);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.io_timeout));
        let connection = self.client().await?.get_multiplexed_async_connection_with_config(&config).await?;
        Ok(CommandConnection::Single(connection))
    }

    /// The shared command connection, dialled on first use or after a failure.
    async fn connection(&self) -> Result<CommandConnection, EngineError> {
        if let Some(connection) = self.current.locked().clone() {
            return Ok(connection);
        }
        // One dial at a time; callers that queued behind it reuse its result.
        let _dialing = self.dialing.lock().await;
        if let Some(connection) = self.current.locked().clone() {
            return Ok(connection);
        }
        let connection = self.dial().await.map_err(|e| engine_error(&self.name, &e))?;
        *self.current.locked() = Some(connection.clone());
        Ok(connection)
    }

    /// Forgets the command connection so the next call dials again.
    fn drop_connection(&self) {
        self.current.locked().take();
    }

    /// Runs `call` on the command connection within `io_timeout`.
    pub async fn run<T, F, Fut>(&self, call: F) -> Result<T, EngineError>
    where
        F: FnOnce(CommandConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let attempt = async {
            let connection = self.connection().await?;
            call(connection).await.map_err(|error| {
                if connection_is_spent(&error) {
                    self.drop_connection();
                }
                engine_error(&self.name, &error)
            })
        };
        match tokio::time::timeout(self.io_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => {
                self.drop_connection();
                Err(timeout_error(&self.name))
            }
        }
    }

    /// A new cluster connection for PUB/SUB (RESP3): every message, including sharded ones,
    /// goes to `push` as the connection reads it. redis-rs resubscribes it after a node
    /// reconnects or slots move.
    pub async fn cluster_pubsub(&self, push: impl AsyncPushSender) -> Result<ClusterConnection, EngineError> {
        let Target::Cluster(settings) = &self.target else {
            return Err(EngineError::Internal("not a cluster".into()));
        };
        let attempt = async {
            let client = settings.builder(ProtocolVersion::RESP3).push_sender(push).build()?;
            client.get_async_connection().await
        };
        match tokio::time::timeout(self.connect_timeout.max(self.io_timeout), attempt).await {
            Ok(result) => result.map_err(|e| engine_error(&self.name, &e)),
            Err(_) => Err(timeout_error(&self.name)),
        }
    }

    /// A new dedicated PUB/SUB connection (not shared: it is in subscriber mode).
    pub async fn pubsub(&self) -> Result<PubSub, EngineError> {
        let attempt = async {
            let client = self.client().await?;
            client.get_async_pubsub().await
        };
        match tokio::time::timeout(self.connect_timeout.max(self.io_timeout), attempt).await {
            Ok(result) => result.map_err(|e| engine_error(&self.name, &e)),
            Err(_) => Err(timeout_error(&self.name)),
        }
    }
}
