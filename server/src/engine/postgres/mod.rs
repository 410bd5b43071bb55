//! The PostgreSQL map broker (`map_broker.type: postgres`): map channels kept in the tables and
//! functions Centrifugo v6.9 uses, so either server runs on a database the other set up and a
//! backend can change map state inside its own transactions (`SELECT cf_map_publish(...)`).
//!
//! Writes call the `<prefix>publish` / `<prefix>remove` functions, which apply them under the
//! channel's shard lock and append them to the day-partitioned stream table. Delivery is an
//! outbox: every node follows every shard of the stream table by id ([`workers`]), so a write
//! reaches subscribers on all nodes whoever made it, in offset order per channel. Reads are
//! single statements (one snapshot), so a state page and its position always agree.
//!
//! Where Spinwire differs from Centrifugo's broker (each for the map contract all brokers keep,
//! see [`super::map`]): reading an unknown channel creates its row, fixing the epoch a later
//! write continues; stream reads return at most the namespace's `stream_size` latest entries,
//! none older than `stream_retention` (Centrifugo leaves both unbounded and does not use
//! `stream_retention`); ephemeral channels report offset 0, as on the other brokers.

mod queries;
mod schema;
mod workers;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::{Object, Pool};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use self::queries::Queries;
use self::schema::Names;
use super::map::{
    DEFAULT_IDEMPOTENT_RESULT_TTL, KeyMode, MapBroker, MapChannelOptions, MapMode, MapRemoval, MapUpdate,
    MapWrite, StatePage, StateRead, Suppressed, idempotent_ttl,
};
use super::{BrokerEventHandler, EngineError, HistoryFilter, HistoryResult, StreamPosition};
use crate::clients::postgres::Target;
use crate::config::PostgresMapBroker as PostgresMapSection;
use crate::proto::client::{ClientInfo, Publication};
use crate::sync::Mutex;

/// The map options of a channel, by name (for work that starts from a row, not a request).
pub type ChannelModes = Arc<dyn Fn(&str) -> Option<MapChannelOptions> + Send + Sync>;

const SECTION: &str = "map_broker.postgres";

/// The section's settings, defaults applied as Centrifugo applies them (zero or negative
/// counts and durations mean the default).
#[derive(Debug, Clone)]
struct Settings {
    num_shards: i32,
    skip_schema_init: bool,
    ttl_check_interval: Duration,
    cleanup_interval: Duration,
    idempotent_result_ttl: Duration,
    stream_retention: Duration,
    poll_interval: Duration,
    batch_size: i64,
    lookahead_days: i64,
    retention_days: i64,
}

fn positive(value: i64, default: i64) -> i64 {
    if value > 0 { value } else { default }
}

fn duration_or(value: Duration, default: Duration) -> Duration {
    if value.is_zero() { default } else { value }
}

impl Settings {
    fn of(section: &PostgresMapSection) -> Result<Self, String> {
        let pg = &section.postgres;
        let num_shards = positive(pg.num_shards, 8);
        if num_shards > i64::from(i16::MAX) {
            return Err(format!("{SECTION}.num_shards: {num_shards} is more than {}", i16::MAX));
        }
        Ok(Self {
            num_shards: num_shards as i32,
            skip_schema_init: pg.skip_schema_init,
            ttl_check_interval: duration_or(section.ttl_check_interval.0, Duration::from_secs(1)),
            cleanup_interval: duration_or(pg.cleanup_interval.0, Duration::from_secs(60)),
            idempotent_result_ttl: duration_or(pg.idempotent_result_ttl.0, DEFAULT_IDEMPOTENT_RESULT_TTL),
            stream_retention: duration_or(pg.stream_retention.0, Duration::from_secs(24 * 3600)),
            poll_interval: duration_or(pg.outbox.poll_interval.0, Duration::from_millis(100)),
            batch_size: positive(pg.outbox.batch_size, 1000),
            lookahead_days: positive(pg.partition_lookahead_days, 2),
            retention_days: pg.partition_retention_days.max(0),
        })
    }
}

/// A duration as a PostgreSQL interval literal (whole milliseconds, at least one).
fn interval(duration: Duration) -> String {
    format!("{} milliseconds", duration.as_millis().max(1))
}

/// Map broker on PostgreSQL; share it as `Arc<PostgresMapBroker>`.
pub struct PostgresMapBroker {
    me: Weak<Self>,
    pool: Pool,
    /// The LISTEN connection's target when `use_notify` is on.
    notify: Option<Target>,
    names: Names,
    sql: Queries,
    settings: Settings,
    modes: ChannelModes,
    handler: OnceLock<Arc<dyn BrokerEventHandler>>,
    /// Channels with subscribers on this node (the only ones the outbox delivers here), each
    /// with whether it is an ephemeral map (resolved once, not per delivered row).
    subscribed: Mutex<HashMap<String, bool>>,
    /// The schema check and worker start, run once (by whoever needs the broker first).
    init: tokio::sync::OnceCell<Result<(), String>>,
    /// Wakes idle outbox readers (LISTEN/NOTIFY).
    wake: Arc<tokio::sync::Notify>,
    healthy: AtomicBool,
}

impl std::fmt::Debug for PostgresMapBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresMapBroker").field("prefix", &self.names.prefix).finish_non_exhaustive()
    }
}

impl PostgresMapBroker {
    /// Builds the broker and, inside a tokio runtime, starts its schema check in the background
    /// ([`MapBroker::ready`] waits for it). `modes` gives a channel's map options by name.
    pub fn new(section: &PostgresMapSection, modes: ChannelModes) -> Result<Arc<Self>, String> {
        let pg = &section.postgres;
        if pg.dsn.trim().is_empty() {
            return Err(format!("{SECTION}.dsn: required for map_broker.type postgres"));
        }
        let base = pg.table_prefix.trim_end_matches('_');
        if !base.is_empty() && !schema::valid_prefix(base) {
            return Err(format!(
                "{SECTION}.table_prefix: {base:?} is not a SQL identifier (letters, digits, _)"
            ));
        }
        let settings = Settings::of(section)?;
        let target = Target::new(&format!("{SECTION}.dsn"), &pg.dsn, &pg.tls, &format!("{SECTION}.tls"))?;
        let pool = target.pool(positive(pg.pool_size, 16) as usize)?;
        let notify = match (pg.use_notify, pg.notify_dsn.trim()) {
            (false, _) => None,
            (true, "") => Some(target),
            (true, dsn) => {
                Some(Target::new(&format!("{SECTION}.notify_dsn"), dsn, &pg.tls, &format!("{SECTION}.tls"))?)
            }
        };
        let names = Names::new(base, pg.binary_data);
        let broker = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            pool,
            notify,
            sql: Queries::new(&names),
            names,
            settings,
            modes,
            handler: OnceLock::new(),
            subscribed: Mutex::default(),
            init: tokio::sync::OnceCell::new(),
            wake: Arc::new(tokio::sync::Notify::new()),
            healthy: AtomicBool::new(true),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            let starting = broker.clone();
            tokio::spawn(async move {
                if let Err(error) = starting.ready().await {
                    tracing::error!(%error, "map_broker.postgres: not started");
                }
            });
        }
        Ok(broker)
    }

    /// Checks (or creates) the schema and starts the workers from the stream's current end.
    async fn initialise(&self) -> Result<(), String> {
        let settings = &self.settings;
        if settings.skip_schema_init {
            let probe = format!("SELECT 1 FROM {} LIMIT 0", self.names.table("stream"));
            self.client().await?.batch_execute(&probe).await.map_err(|e| format!("{SECTION}: {e}"))?;
        } else {
            schema::ensure(&self.pool, &self.names, settings.num_shards)
                .await
                .map_err(|e| format!("{SECTION}: {e}"))?;
        }
        schema::ensure_partitions(&self.pool, &self.names, settings.lookahead_days)
            .await
            .map_err(|e| format!("{SECTION}: {e}"))?;
        let start: i64 = self
            .client()
            .await?
            .query_one(self.sql.outbox_start.as_str(), &[])
            .await
            .map_err(internal_text)?
            .get(0);
        workers::start(self.me.clone(), start);
        Ok(())
    }

    async fn client(&self) -> Result<Object, String> {
        self.pool.get().await.map_err(|e| format!("{SECTION}: no connection: {e}"))
    }

    /// A pooled connection once the broker is initialised.
    async fn connection(&self) -> Result<Object, EngineError> {
        self.ready().await?;
        self.client().await.map_err(|e| {
            self.healthy.store(false, Ordering::Relaxed);
            EngineError::Internal(e)
        })
    }

    async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, EngineError> {
        let client = self.connection().await?;
        let statement = client.prepare_cached(sql).await.map_err(internal)?;
        let rows = client.query(&statement, params).await.map_err(internal);
        self.healthy.store(rows.is_ok(), Ordering::Relaxed);
        rows
    }

    /// Creates the channel's row (a new epoch) if it has none yet.
    async fn create_channel(&self, channel: &str, options: &MapChannelOptions) -> Result<(), EngineError> {
        let meta_ttl = options.meta_ttl.filter(|_| !options.key_ttl.is_zero()).map(interval);
        self.query(&self.sql.create_channel, &[&channel, &meta_ttl]).await.map(drop)
    }

    /// Runs a read whose first columns are the channel's `top_offset, epoch`, creating the
    /// channel first when it has no row.
    async fn read_channel(
        &self,
        channel: &str,
        options: &MapChannelOptions,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<(StreamPosition, Vec<Row>), EngineError> {
        let mut rows = self.query(sql, params).await?;
        if rows.is_empty() {
            self.create_channel(channel, options).await?;
            rows = self.query(sql, params).await?;
        }
        let first =
            rows.first().ok_or_else(|| EngineError::Internal(format!("{channel}: channel row vanished")))?;
        let offset: i64 = first.get(0);
        let top = if options.mode == MapMode::Ephemeral { 0 } else { offset.max(0) as u64 };
        Ok((StreamPosition { offset: top, epoch: first.get(1) }, rows))
    }

    fn deliver(&self, channel: &str, mut publication: Publication, epoch: String, base: Option<Bytes>) {
        let Some(ephemeral) = self.subscribed.locked().get(channel).copied() else { return };
        if ephemeral {
            publication.offset = 0;
        }
        if let Some(handler) = self.handler.get() {
            let position = StreamPosition { offset: publication.offset, epoch };
            handler.handle_publication(channel, publication, position, base);
        }
    }
}

fn internal(error: tokio_postgres::Error) -> EngineError {
    EngineError::Internal(internal_text(error))
}

fn internal_text(error: tokio_postgres::Error) -> String {
    format!("{SECTION}: {}", schema::db_text(&error))
}

fn suppression(reason: &str) -> Result<Suppressed, EngineError> {
    Ok(match reason {
        "idempotency" => Suppressed::Idempotency,
        "version" => Suppressed::Version,
        "key_exists" => Suppressed::KeyExists,
        "key_not_found" => Suppressed::KeyNotFound,
        other => return Err(EngineError::Internal(format!("{SECTION}: unexpected suppression {other:?}"))),
    })
}

/// The outcome row of `publish`/`remove`: (result_id, channel_offset, epoch, suppress_reason).
fn update_of(row: &Row, options: &MapChannelOptions) -> Result<(MapUpdate, Option<i64>), EngineError> {
    let offset: i64 = row.get(1);
    let offset = if options.mode == MapMode::Ephemeral { 0 } else { offset.max(0) as u64 };
    let suppressed = row.get::<_, Option<String>>(3).as_deref().map(suppression).transpose()?;
    let update = MapUpdate { position: StreamPosition { offset, epoch: row.get(2) }, suppressed };
    Ok((update, row.get(0)))
}

fn tags_of(text: Option<String>) -> BTreeMap<String, String> {
    text.and_then(|text| serde_json::from_str(&text).ok()).unwrap_or_default()
}

fn tags_text(tags: &BTreeMap<String, String>) -> Option<String> {
    (!tags.is_empty()).then(|| serde_json::to_string(tags).expect("string maps serialise"))
}

/// A data column as sent on: BYTEA as stored; JSONB's text without the blanks PostgreSQL puts
/// after `:` and `,` (so data reads back as compact as Centrifugo serves it).
fn data_of(value: Option<Vec<u8>>, jsonb: bool) -> Bytes {
    match value {
        Some(text) if jsonb => Bytes::from(compact_json(&text)),
        Some(bytes) => Bytes::from(bytes),
        None => Bytes::new(),
    }
}

/// `text` (valid JSON) without whitespace outside strings.
fn compact_json(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for &byte in text {
        if in_string {
            (escaped, in_string) = (!escaped && byte == b'\\', escaped || byte != b'"');
        } else if byte == b'"' {
            in_string = true;
        } else if byte.is_ascii_whitespace() {
            continue;
        }
        out.push(byte);
    }
    out
}

fn non_empty(bytes: &[u8]) -> Option<&[u8]> {
    (!bytes.is_empty()).then_some(bytes)
}

/// A publication from a row laid out as: key, data, tags, offset, client_id, user_id,
/// conn_info, chan_info, time (from column `at`).
fn publication_at(row: &Row, at: usize, ephemeral: bool, jsonb: bool) -> Publication {
    let info = row.get::<_, Option<String>>(at + 4).map(|client| ClientInfo {
        client,
        user: row.get::<_, Option<String>>(at + 5).unwrap_or_default(),
        conn_info: data_of(row.get(at + 6), jsonb),
        chan_info: data_of(row.get(at + 7), jsonb),
    });
    let offset: i64 = row.get(at + 3);
    Publication {
        key: row.get(at),
        data: data_of(row.get(at + 1), jsonb),
        tags: tags_of(row.get(at + 2)),
        offset: if ephemeral { 0 } else { offset.max(0) as u64 },
        info,
        time: row.get::<_, Option<i64>>(at + 8).unwrap_or_default(),
        ..Default::default()
    }
}

#[async_trait]
impl MapBroker for PostgresMapBroker {
    fn set_event_handler(&self, handler: Arc<dyn BrokerEventHandler>) {
        let _ = self.handler.set(handler);
    }

    async fn subscribe(&self, channel: &str) -> Result<(), EngineError> {
        let ephemeral = (self.modes)(channel).is_some_and(|options| options.mode == MapMode::Ephemeral);
        self.subscribed.locked().insert(channel.to_owned(), ephemeral);
        Ok(())
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), EngineError> {
        self.subscribed.locked().remove(channel);
        Ok(())
    }

    async fn publish(
        &self,
        channel: &str,
        options: &MapChannelOptions,
        publication: Publication,
        write: &MapWrite,
    ) -> Result<MapUpdate, EngineError> {
        if options.mode == MapMode::Ephemeral && write.version > 0 {
            return Err(EngineError::Internal("versions need a map mode with a stream".into()));
        }
        let key_ttl = (!options.key_ttl.is_zero()).then(|| interval(options.key_ttl));
        let meta_ttl = options.meta_ttl.filter(|_| key_ttl.is_some()).map(interval);
        let key_mode = match write.key_mode {
            KeyMode::Replace => None,
            KeyMode::IfNew => Some("if_new"),
            KeyMode::IfExists => Some("if_exists"),
        };
        let version = (write.version > 0).then_some(write.version as i64);
        let version_epoch = non_empty(write.version_epoch.as_bytes()).map(|_| write.version_epoch.as_str());
        let idempotency_ttl = write.idempotency_key.as_ref().map(|_| {
            interval(idempotent_ttl(write.idempotent_result_ttl, self.settings.idempotent_result_ttl))
        });
        let info = publication.info.as_ref();
        let params: [&(dyn ToSql + Sync); 20] = [
            &channel,
            &publication.key,
            &non_empty(&publication.data),
            &tags_text(&publication.tags),
            &key_ttl,
            &meta_ttl,
            &key_mode,
            &None::<i64>,
            &None::<String>,
            &version,
            &version_epoch,
            &write.idempotency_key,
            &idempotency_ttl,
            &write.use_delta,
            &info.map(|i| i.client.as_str()),
            &info.map(|i| i.user.as_str()),
            &info.and_then(|i| non_empty(&i.conn_info)),
            &info.and_then(|i| non_empty(&i.chan_info)),
            &write.refresh_ttl_on_suppress,
            &self.settings.num_shards,
        ];
        let rows = self.query(&self.sql.publish, &params).await?;
        let row = rows
            .first()
            .ok_or_else(|| EngineError::Internal(format!("{SECTION}: publish returned nothing")))?;
        Ok(update_of(row, options)?.0)
    }

    async fn remove(
        &self,
        channel: &str,
        options: &MapChannelOptions,
        key: &str,
        removal: &MapRemoval,
    ) -> Result<MapUpdate, EngineError> {
        let meta_ttl = options.meta_ttl.filter(|_| !options.key_ttl.is_zero()).map(interval);
        let idempotency_ttl = removal.idempotency_key.as_ref().map(|_| {
            interval(idempotent_ttl(removal.idempotent_result_ttl, self.settings.idempotent_result_ttl))
        });
        let params: [&(dyn ToSql + Sync); 6] = [
            &channel,
            &key,
            &meta_ttl,
            &removal.idempotency_key,
            &idempotency_ttl,
            &self.settings.num_shards,
        ];
        let Some(tags) = &removal.tags else {
            let rows = self.query(&self.sql.remove, &params).await?;
            let row = rows
                .first()
                .ok_or_else(|| EngineError::Internal(format!("{SECTION}: remove returned nothing")))?;
            return Ok(update_of(row, options)?.0);
        };
        // The removal carries its own tags: rewritten before the outbox can see the row.
        let mut client = self.connection().await?;
        let transaction = client.transaction().await.map_err(internal)?;
        let row = transaction.query_one(self.sql.remove.as_str(), &params).await.map_err(internal)?;
        let (update, id) = update_of(&row, options)?;
        if let Some(id) = id {
            let tags = serde_json::to_string(tags).expect("string maps serialise");
            transaction.execute(self.sql.retag.as_str(), &[&tags, &id]).await.map_err(internal)?;
        }
        transaction.commit().await.map_err(internal)?;
        Ok(update)
    }

    async fn read_state(
        &self,
        channel: &str,
        options: &MapChannelOptions,
        read: &StateRead,
    ) -> Result<StatePage, EngineError> {
        let limit = (read.limit >= 0).then(|| i64::from(read.limit) + 1);
        let (position, rows) = match &read.key {
            Some(key) => self.read_channel(channel, options, &self.sql.state_key, &[&channel, key]).await?,
            None => {
                self.read_channel(channel, options, &self.sql.state_page, &[&channel, &read.cursor, &limit])
                    .await?
            }
        };
        if let Some(revision) = &read.revision
            && !revision.epoch.is_empty()
            && revision.epoch != position.epoch
        {
            return Err(EngineError::UnrecoverablePosition);
        }
        if read.key.is_none() && read.limit == 0 {
            return Ok(StatePage { entries: Vec::new(), position, cursor: String::new() });
        }
        let ephemeral = options.mode == MapMode::Ephemeral;
        let mut entries: Vec<Publication> = rows
            .iter()
            .filter(|row| row.get::<_, Option<String>>(2).is_some())
            .map(|row| publication_at(row, 2, ephemeral, !self.names.binary))
            .collect();
        let mut cursor = String::new();
        if read.key.is_none() && read.limit > 0 && entries.len() > read.limit as usize {
            entries.truncate(read.limit as usize);
            cursor = entries.last().map(|e| e.key.clone()).unwrap_or_default();
        }
        Ok(StatePage { entries, position, cursor })
    }

    async fn read_stream(
        &self,
        channel: &str,
        options: &MapChannelOptions,
        filter: &HistoryFilter,
    ) -> Result<HistoryResult, EngineError> {
        let window = if options.mode.has_stream() { options.stream_size as i64 } else { 0 };
        let (after, before) = match (&filter.since, filter.reverse) {
            (Some(since), false) => (since.offset as i64, None),
            (Some(since), true) => (0, Some(since.offset as i64)),
            (None, _) => (0, None),
        };
        let limit = (filter.limit >= 0).then_some(i64::from(filter.limit));
        let retention = interval(self.settings.stream_retention);
        let sql = if filter.reverse { &self.sql.stream_reverse } else { &self.sql.stream_forward };
        let params: [&(dyn ToSql + Sync); 6] = [&channel, &after, &window, &before, &retention, &limit];
        let (position, rows) = self.read_channel(channel, options, sql, &params).await?;
        if let Some(since) = &filter.since
            && !since.epoch.is_empty()
            && since.epoch != position.epoch
        {
            return Err(EngineError::UnrecoverablePosition);
        }
        let publications = rows
            .iter()
            .filter(|row| row.get::<_, Option<String>>(2).is_some())
            .map(|row| Publication {
                removed: row.get::<_, Option<bool>>(11).unwrap_or(false),
                ..publication_at(row, 2, false, !self.names.binary)
            })
            .collect();
        Ok(HistoryResult { publications, position })
    }

    async fn stats(&self, channel: &str) -> Result<u32, EngineError> {
        let rows = self.query(&self.sql.stats, &[&channel]).await?;
        Ok(rows.first().map_or(0, |row| row.get::<_, i64>(0).max(0) as u32))
    }

    async fn clear(&self, channel: &str) -> Result<(), EngineError> {
        self.query(&self.sql.clear, &[&channel]).await.map(drop)
    }

    async fn ready(&self) -> Result<(), EngineError> {
        self.init.get_or_init(|| self.initialise()).await.clone().map_err(EngineError::Internal)
    }

    fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && self.init.get().is_some_and(Result::is_ok)
    }
}

#[cfg(test)]
mod tests;
