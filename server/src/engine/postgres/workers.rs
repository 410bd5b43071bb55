//! The broker's background work, each loop holding only a weak reference so it ends with the
//! broker:
//! * one outbox reader per shard, following the stream table by id from where it stood at
//!   startup and delivering each row to this node's subscribers (woken early by NOTIFY when
//!   `use_notify` is on, else polling every `outbox.poll_interval`);
//! * key expiry every `ttl_check_interval` (`<prefix>expire_keys`, one channel at a time; the
//!   removals come back through the outbox like any write);
//! * cleanup every `cleanup_interval`: expired channel rows and idempotency results in bounded
//!   batches, the next days' partitions created and those past `partition_retention_days`
//!   dropped.

use std::sync::Weak;
use std::time::Duration;

use bytes::Bytes;
use tokio_postgres::Row;

use super::{PostgresMapBroker, data_of, interval, schema, tags_of};
use crate::proto::client::{ClientInfo, Publication};

/// Rows removed per cleanup statement, and the pause between two statements.
const CLEANUP_BATCH: i64 = 1000;
const CLEANUP_PAUSE: Duration = Duration::from_millis(100);
/// Backoff bounds after a failed query or a lost LISTEN connection.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

pub(super) fn start(broker: Weak<PostgresMapBroker>, cursor: i64) {
    let Some(strong) = broker.upgrade() else { return };
    for shard in 0..strong.settings.num_shards {
        tokio::spawn(follow_shard(broker.clone(), shard as i16, cursor));
    }
    if let Some(target) = strong.notify.clone() {
        let channel = strong.names.notify_channel();
        let wake = strong.wake.clone();
        let alive = broker.clone();
        tokio::spawn(async move {
            let mut backoff = RETRY_MIN;
            while alive.strong_count() > 0 {
                if let Err(error) = target.listen(&channel, &|_| wake.notify_waiters()).await {
                    tracing::warn!(%error, "map_broker.postgres: LISTEN {channel} lost; retrying");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RETRY_MAX);
            }
        });
    }
    let settings = strong.settings.clone();
    tokio::spawn(every(broker.clone(), settings.ttl_check_interval, |b| {
        Box::pin(async move { b.expire().await })
    }));
    tokio::spawn(every(broker, settings.cleanup_interval, |b| Box::pin(async move { b.clean().await })));
}

type Job =
    fn(std::sync::Arc<PostgresMapBroker>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Runs `job` every `period` (the first time after one period) while the broker lives.
async fn every(broker: Weak<PostgresMapBroker>, period: Duration, job: Job) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(broker) = broker.upgrade() else { return };
        job(broker).await;
    }
}

/// Delivers one shard's new stream rows, in id order, for as long as the broker lives.
async fn follow_shard(broker: Weak<PostgresMapBroker>, shard: i16, mut cursor: i64) {
    let mut failures = 0u32;
    loop {
        let Some(strong) = broker.upgrade() else { return };
        let (wake, poll, batch) =
            (strong.wake.clone(), strong.settings.poll_interval, strong.settings.batch_size);
        let pause = match strong.outbox_batch(shard, cursor).await {
            Ok((read, last)) => {
                failures = 0;
                cursor = last;
                if read as i64 >= batch {
                    continue; // more are waiting
                }
                poll
            }
            Err(error) => {
                failures += 1;
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(%error, shard, failures, "map_broker.postgres: reading the stream failed");
                }
                RETRY_MIN.max(poll)
            }
        };
        drop(strong);
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

impl PostgresMapBroker {
    /// Delivers the next batch of `shard`'s rows after `cursor`: how many there were and the
    /// new cursor.
    async fn outbox_batch(&self, shard: i16, cursor: i64) -> Result<(usize, i64), String> {
        let client = self.client().await?;
        let statement = client.prepare_cached(&self.sql.outbox).await.map_err(super::internal_text)?;
        let rows = client
            .query(&statement, &[&shard, &cursor, &self.settings.batch_size])
            .await
            .map_err(super::internal_text)?;
        drop(client);
        let mut last = cursor;
        for row in &rows {
            last = last.max(row.get(0));
            let (channel, epoch, publication, base) = outbox_row(row, !self.names.binary);
            self.deliver(&channel, publication, epoch, base);
        }
        Ok((rows.len(), last))
    }

    /// Removes expired keys channel by channel (with each channel's `meta_ttl`).
    async fn expire(&self) {
        let channels = match self.query(&self.sql.expiring_channels, &[]).await {
            Ok(rows) => rows.iter().map(|row| row.get::<_, String>(0)).collect::<Vec<_>>(),
            Err(error) => return tracing::warn!(%error, "map_broker.postgres: finding expired keys failed"),
        };
        for channel in channels {
            let meta_ttl = (self.modes)(&channel)
                .and_then(|options| options.meta_ttl.filter(|_| !options.key_ttl.is_zero()))
                .map(interval);
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
                [&self.settings.num_shards, &meta_ttl, &channel];
            if let Err(error) = self.query(&self.sql.expire_keys, &params).await {
                tracing::warn!(%error, channel, "map_broker.postgres: expiring keys failed");
            }
        }
    }

    /// Forgets expired channels and idempotency results, then maintains the partitions.
    async fn clean(&self) {
        for sql in [&self.sql.cleanup_meta, &self.sql.cleanup_idempotency] {
            loop {
                match self.connection().await {
                    Ok(client) => match client.execute(sql.as_str(), &[&CLEANUP_BATCH]).await {
                        Ok(removed) if removed as i64 >= CLEANUP_BATCH => {}
                        Ok(_) => break,
                        Err(error) => {
                            tracing::warn!(error = %super::internal_text(error), "map_broker.postgres: cleanup failed");
                            break;
                        }
                    },
                    Err(_) => break,
                }
                tokio::time::sleep(CLEANUP_PAUSE).await;
            }
        }
        let settings = &self.settings;
        if let Err(error) = schema::ensure_partitions(&self.pool, &self.names, settings.lookahead_days).await
        {
            tracing::warn!(%error, "map_broker.postgres: creating partitions failed");
        }
        if let Err(error) =
            schema::drop_old_partitions(&self.pool, &self.names, settings.retention_days).await
        {
            tracing::warn!(%error, "map_broker.postgres: dropping old partitions failed");
        }
    }
}

/// An outbox row: id, channel, channel_offset, epoch, key, data, tags, removed, client_id,
/// user_id, conn_info, chan_info, prev_data, time → (channel, epoch, publication, delta base).
fn outbox_row(row: &Row, jsonb: bool) -> (String, String, Publication, Option<Bytes>) {
    let info = row.get::<_, Option<String>>(8).map(|client| ClientInfo {
        client,
        user: row.get::<_, Option<String>>(9).unwrap_or_default(),
        conn_info: data_of(row.get(10), jsonb),
        chan_info: data_of(row.get(11), jsonb),
    });
    let offset: i64 = row.get(2);
    let publication = Publication {
        offset: offset.max(0) as u64,
        key: row.get(4),
        data: data_of(row.get(5), jsonb),
        tags: tags_of(row.get(6)),
        removed: row.get::<_, Option<bool>>(7).unwrap_or(false),
        info,
        time: row.get::<_, Option<i64>>(13).unwrap_or_default(),
        ..Default::default()
    };
    let base = Some(data_of(row.get(12), jsonb)).filter(|b| !b.is_empty());
    (row.get(1), row.get(3), publication, base)
}
