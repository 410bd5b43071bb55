//! Redis Streams (`type: redis_stream`): a consumer group over each stream in `streams`.
//!
//! Each of `num_workers` workers per stream is a group member named `<node uid>-<n>` and
//! loops: read its own pending entries first (`XREADGROUP … 0`: what it read and did not
//! acknowledge before a reconnect), then new ones (`>`, blocking, up to 100 at a time),
//! executing them in stream order and `XACK`ing the batch's settled ones in one call. A command to retry is retried in place with the
//! backoff, so the entries behind it wait. Every few seconds a worker takes over entries other
//! members left pending longer than `visibility_timeout` (`XAUTOCLAIM`: a node that died) and
//! reads them through its pending list. With one worker a stream's order holds; with several,
//! entries run in parallel, as in Centrifugo.
//!
//! The group is created at `$` with MKSTREAM (new entries only), and again if Redis lost it.

use std::time::Duration;

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamId, StreamReadReply};
use redis::{AsyncConnectionConfig, Client};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Backoff, ConsumedPublication, Context, Outcome};
use crate::clients::redis::{Login, client_for, connection_info};
use crate::config::{PublicationFieldNames, RedisStreamConsumer};

/// How long one XREADGROUP waits for new entries.
const BLOCK: Duration = Duration::from_secs(2);
/// How often a worker looks for entries abandoned by other members.
const RECLAIM_INTERVAL: Duration = Duration::from_secs(5);
/// Entries read (and claimed) per call.
const BATCH: usize = 100;

pub(super) fn spawn(
    config: &RedisStreamConsumer,
    context: Context,
    stop: CancellationToken,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let key = format!("consumers.{}.redis_stream", context.name);
    let login = Login { user: &config.user, password: &config.password, db: config.db };
    let address = config.address.first().map(String::as_str).unwrap_or_default();
    let info = connection_info(login, address, &config.tls).map_err(anyhow::Error::msg)?;
    let client = client_for(info, &config.tls, &key).map_err(anyhow::Error::msg)?;
    let uid = context.executor.node().uid.clone();
    let mut tasks = Vec::new();
    for stream in &config.streams {
        for n in 0..config.num_workers {
            let worker = Worker {
                client: client.clone(),
                stream: stream.clone(),
                group: config.consumer_group.clone(),
                member: format!("{uid}-{n}"),
                payload_field: config.payload_value.clone(),
                method_field: config.method_value.clone(),
                publication_fields: config
                    .publication_data_mode
                    .enabled
                    .then(|| config.publication_data_mode.field_names()),
                visibility_timeout: config.visibility_timeout.0,
                connect_timeout: config.connect_timeout.0,
                io_timeout: config.io_timeout.0,
            };
            tasks.push(tokio::spawn(worker.run(context.clone(), stop.clone())));
        }
    }
    Ok(tasks)
}

struct Worker {
    client: Client,
    stream: String,
    group: String,
    member: String,
    payload_field: String,
    method_field: String,
    publication_fields: Option<PublicationFieldNames>,
    visibility_timeout: Duration,
    connect_timeout: Duration,
    io_timeout: Duration,
}

impl Worker {
    async fn run(self, context: Context, stop: CancellationToken) {
        let mut backoff = Backoff::default();
        while !stop.is_cancelled() {
            let error = match self.session(&context, &stop).await {
                Ok(()) => return,
                Err(error) => error,
            };
            context.failed(&format!("redis stream {:?}: {error}", self.stream));
            if !backoff.sleep(&stop).await {
                return;
            }
        }
    }

    /// One connection's life: returns `Ok` on stop, the error when Redis failed.
    async fn session(&self, context: &Context, stop: &CancellationToken) -> redis::RedisResult<()> {
        // Blocking reads get their own connection: a multiplexed one would hold XACKs behind them.
        let mut reads = self.connect(BLOCK + self.io_timeout).await?;
        let mut commands = self.connect(self.io_timeout).await?;
        self.create_group(&mut commands).await?;
        let mut own_pending = true;
        let mut last_reclaim = tokio::time::Instant::now();
        while !stop.is_cancelled() {
            if last_reclaim.elapsed() >= RECLAIM_INTERVAL {
                own_pending |= self.reclaim(&mut commands).await?;
                last_reclaim = tokio::time::Instant::now();
            }
            let from = if own_pending { "0" } else { ">" };
            let entries = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                read = self.read(&mut reads, from) => match read {
                    Err(error) if error.code() == Some("NOGROUP") => {
                        self.create_group(&mut commands).await?;
                        continue;
                    }
                    other => other?,
                },
            };
            if own_pending && entries.is_empty() {
                own_pending = false;
            }
            if !self.run_batch(context, stop, &entries, &mut commands).await? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Executes `entries` in order and acknowledges the settled ones with one XACK; false
    /// when stopped before the end (what settled is still acknowledged).
    async fn run_batch(
        &self,
        context: &Context,
        stop: &CancellationToken,
        entries: &[StreamId],
        commands: &mut MultiplexedConnection,
    ) -> redis::RedisResult<bool> {
        let mut settled = Vec::with_capacity(entries.len());
        let mut finished = true;
        for entry in entries {
            let what = || format!("{} {}", self.stream, entry.id);
            if !context.until_settled(stop, &what, || self.execute(context, entry)).await {
                finished = false;
                break;
            }
            settled.push(entry.id.as_str());
        }
        if !settled.is_empty() {
            redis::cmd("XACK").arg(&self.stream).arg(&self.group).arg(&settled).exec_async(commands).await?;
        }
        Ok(finished)
    }

    async fn connect(&self, response_timeout: Duration) -> redis::RedisResult<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(response_timeout));
        self.client.get_multiplexed_async_connection_with_config(&config).await
    }

    async fn create_group(&self, commands: &mut MultiplexedConnection) -> redis::RedisResult<()> {
        let created = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(&self.group)
            .arg("$")
            .arg("MKSTREAM")
            .exec_async(commands)
            .await;
        match created {
            Err(error) if error.code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    async fn read(&self, reads: &mut MultiplexedConnection, from: &str) -> redis::RedisResult<Vec<StreamId>> {
        let mut command = redis::cmd("XREADGROUP");
        command.arg("GROUP").arg(&self.group).arg(&self.member).arg("COUNT").arg(BATCH);
        if from == ">" {
            command.arg("BLOCK").arg(BLOCK.as_millis() as u64);
        }
        command.arg("STREAMS").arg(&self.stream).arg(from);
        let reply: Option<StreamReadReply> = command.query_async(reads).await?;
        Ok(reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids).collect())
    }

    /// Takes over entries idle for longer than `visibility_timeout`; true if any moved here.
    async fn reclaim(&self, commands: &mut MultiplexedConnection) -> redis::RedisResult<bool> {
        let reply: redis::Value = redis::cmd("XAUTOCLAIM")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&self.member)
            .arg(self.visibility_timeout.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(BATCH)
            .arg("JUSTID")
            .query_async(commands)
            .await?;
        let claimed = match reply {
            redis::Value::Array(parts) => {
                matches!(parts.get(1), Some(redis::Value::Array(ids)) if !ids.is_empty())
            }
            _ => false,
        };
        Ok(claimed)
    }

    async fn execute(&self, context: &Context, entry: &StreamId) -> Outcome {
        let Some(payload) = entry.get::<Vec<u8>>(&self.payload_field) else {
            return Outcome::Skipped(super::SkipReason::Malformed);
        };
        match &self.publication_fields {
            None => {
                let method = entry.get::<String>(&self.method_field);
                context.dispatcher.command(method.as_deref(), &payload).await
            }
            Some(names) => {
                let all = entry.map.keys().map(String::as_str);
                match ConsumedPublication::from_fields(names, Bytes::from(payload), |k| entry.get(k), all) {
                    Some(publication) => context.dispatcher.publication(publication).await,
                    None => Outcome::Skipped(super::SkipReason::Malformed),
                }
            }
        }
    }
}
