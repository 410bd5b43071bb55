//! The transactional outbox (`type: postgresql`): a backend inserts commands into a table in
//! the same transaction as its own writes; this consumer executes and deletes them.
//!
//! The table is Centrifugo's: `id` (ascending = order), `method`, `payload` (JSON, JSONB or
//! text) and `partition`. One task per partition, each loop one transaction:
//! `pg_advisory_xact_lock` on the partition (so nodes sharing the table take turns and the
//! order holds across them; `use_try_lock` skips a partition another node holds), select up
//! to `partition_select_limit` rows in id order (`FOR UPDATE SKIP LOCKED`, so nothing else
//! touching the table blocks us), execute them in order, delete the executed ones, commit.
//! A command to retry stops the batch there: the rows before it are deleted, it and the rest
//! wait for the next round, after a backoff. A crash before the commit executes the batch
//! again (at least once).
//!
//! Rounds run back to back while partitions are full; otherwise every
//! `partition_poll_interval`, or at once on `NOTIFY <partition_notification_channel>, '<n>'`.

use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Backoff, Context, Outcome};
use crate::clients::postgres::Target;
use crate::config::PostgresConsumer;

/// One outbox row.
struct Row {
    id: i64,
    method: String,
    payload: String,
}

struct Outbox {
    pool: Pool,
    select: String,
    delete: String,
    lock_prefix: String,
    try_lock: bool,
    limit: i64,
    poll_interval: std::time::Duration,
}

/// Why a round ended early.
enum RoundError {
    /// `use_try_lock` and another node holds the partition.
    Busy,
    Failed(String),
}

pub(super) fn spawn(
    config: &PostgresConsumer,
    context: Context,
    stop: CancellationToken,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let key = format!("consumers.{}.postgresql", context.name);
    let target = Target::new(&format!("{key}.dsn"), &config.dsn, &config.tls, &format!("{key}.tls"))
        .map_err(anyhow::Error::msg)?;
    let partitions = config.num_partitions as usize;
    let table = &config.outbox_table_name;
    let outbox = Arc::new(Outbox {
        pool: target.pool(partitions).map_err(anyhow::Error::msg)?,
        select: format!(
            "SELECT id::bigint, method::text, payload::text FROM {table} WHERE partition = $1::bigint \
             ORDER BY id ASC LIMIT $2 FOR UPDATE SKIP LOCKED"
        ),
        delete: format!("DELETE FROM {table} WHERE id = ANY($1)"),
        lock_prefix: format!("centrifugo_partition_lock_{}", context.name),
        try_lock: config.use_try_lock,
        limit: i64::from(config.partition_select_limit),
        poll_interval: config.partition_poll_interval.0,
    });
    let wakes: Arc<Vec<Notify>> = Arc::new((0..partitions).map(|_| Notify::new()).collect());
    let mut tasks = Vec::new();
    if !config.partition_notification_channel.is_empty() {
        let listen_target = if config.partition_notification_dsn.is_empty() {
            target
        } else {
            Target::new(
                &format!("{key}.partition_notification_dsn"),
                &config.partition_notification_dsn,
                &config.tls,
                &format!("{key}.tls"),
            )
            .map_err(anyhow::Error::msg)?
        };
        let channel = format!("\"{}\"", config.partition_notification_channel);
        tasks.push(tokio::spawn(listen(
            listen_target,
            channel,
            wakes.clone(),
            context.clone(),
            stop.clone(),
        )));
    }
    for partition in 0..partitions {
        let worker = Partition { outbox: outbox.clone(), index: partition, wakes: wakes.clone() };
        tasks.push(tokio::spawn(worker.run(context.clone(), stop.clone())));
    }
    Ok(tasks)
}

/// Wakes partitions on notifications; reconnects after a failure, a second later.
async fn listen(
    target: Target,
    channel: String,
    wakes: Arc<Vec<Notify>>,
    context: Context,
    stop: CancellationToken,
) {
    let wake = |payload: Option<&str>| match payload.map(str::parse::<usize>) {
        None => wakes.iter().for_each(Notify::notify_one),
        Some(Ok(partition)) if partition < wakes.len() => wakes[partition].notify_one(),
        Some(_) => {
            tracing::warn!(consumer = %context.name, ?payload, "outbox notification names no partition")
        }
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            result = target.listen(&channel, &wake) => {
                let error = result.err().unwrap_or_default();
                context.failed(&format!("outbox LISTEN: {error}"));
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}

struct Partition {
    outbox: Arc<Outbox>,
    index: usize,
    wakes: Arc<Vec<Notify>>,
}

impl Partition {
    async fn run(self, context: Context, stop: CancellationToken) {
        let mut backoff = Backoff::default();
        while !stop.is_cancelled() {
            // A round is never interrupted: what it executed, it deletes (the drain).
            let pause = match self.round(&context).await {
                Ok(rows) => {
                    backoff.reset();
                    (rows < self.outbox.limit as usize).then_some(self.outbox.poll_interval)
                }
                Err(RoundError::Busy) => Some(self.outbox.poll_interval),
                Err(RoundError::Failed(error)) => {
                    context.failed(&format!("outbox partition {}: {error}", self.index));
                    Some(backoff.next_delay())
                }
            };
            if let Some(pause) = pause {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = self.wakes[self.index].notified() => {}
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }

    /// One transaction: lock, select, execute in order, delete what was settled, commit.
    /// Returns how many rows were settled.
    async fn round(&self, context: &Context) -> Result<usize, RoundError> {
        let failed = |e: tokio_postgres::Error| RoundError::Failed(e.to_string());
        let mut client = self.outbox.pool.get().await.map_err(|e| RoundError::Failed(e.to_string()))?;
        let tx = client.transaction().await.map_err(failed)?;
        let lock = format!("{}{}", self.outbox.lock_prefix, self.index);
        if self.outbox.try_lock {
            let row = tx
                .query_one("SELECT pg_try_advisory_xact_lock(hashtext($1))", &[&lock])
                .await
                .map_err(failed)?;
            if !row.get::<_, bool>(0) {
                return Err(RoundError::Busy);
            }
        } else {
            tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&lock]).await.map_err(failed)?;
        }
        let partition = self.index as i64;
        let rows: Vec<Row> = tx
            .query(&self.outbox.select, &[&partition, &self.outbox.limit])
            .await
            .map_err(failed)?
            .iter()
            .map(|r| Row { id: r.get(0), method: r.get(1), payload: r.get(2) })
            .collect();
        let mut settled = Vec::with_capacity(rows.len());
        let mut retry = None;
        for row in &rows {
            let outcome = context.dispatcher.command(Some(&row.method), row.payload.as_bytes()).await;
            if let Outcome::Retry(error) = &outcome {
                retry = Some(format!("outbox row {}: {error}", row.id));
                break;
            }
            context.settle(&outcome, &|| format!("outbox row {}", row.id));
            settled.push(row.id);
        }
        if !settled.is_empty() {
            tx.execute(&self.outbox.delete, &[&settled]).await.map_err(failed)?;
        }
        tx.commit().await.map_err(failed)?;
        match retry {
            Some(error) => Err(RoundError::Failed(error)),
            None => Ok(settled.len()),
        }
    }
}
