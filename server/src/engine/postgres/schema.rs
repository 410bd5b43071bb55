//! The broker's tables and functions: their names under `table_prefix`, the SQL that creates
//! them (`schema.sql`, rendered for the JSONB and the BYTEA variant), the startup check of
//! `schema_version`, and the daily partitions of the stream table.
//!
//! Both variants are always created, whichever `binary_data` selects, as Centrifugo does, so a
//! database is usable by either setting and by either server. Schema version 1 is the only one
//! so far; a database at a later version was set up by a newer server and is refused rather
//! than written with assumptions that may no longer hold.

use deadpool_postgres::Pool;
use time::{Date, Duration as Days, OffsetDateTime};

const TEMPLATE: &str = include_str!("schema.sql");
const FUNCTIONS_MARKER: &str = "-- @functions";
/// The schema version this server writes and understands.
pub(super) const SCHEMA_VERSION: i32 = 1;
/// Serialises schema setup between Spinwire nodes starting together.
const SETUP_LOCK_SALT: i64 = 0x5350_574d_4150; // "SPWMAP"

/// The names of one variant's objects, e.g. `cf_map_stream`, `cf_map_publish`.
#[derive(Debug, Clone)]
pub(super) struct Names {
    /// `table_prefix` without trailing underscores (`cf` when empty).
    pub base: String,
    /// `<base>_map_` or `<base>_binary_map_`.
    pub prefix: String,
    pub binary: bool,
}

impl Names {
    pub fn new(table_prefix: &str, binary: bool) -> Self {
        let base = match table_prefix.trim_end_matches('_') {
            "" => "cf",
            base => base,
        };
        let prefix = if binary { format!("{base}_binary_map_") } else { format!("{base}_map_") };
        Self { base: base.to_owned(), prefix, binary }
    }

    pub fn table(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The channel `pg_notify` wakes outbox readers on.
    pub fn notify_channel(&self) -> String {
        self.table("stream_notify")
    }

    /// SQL turning a BYTEA parameter into this variant's data type.
    pub fn data_in(&self, parameter: &str) -> String {
        if self.binary { parameter.to_owned() } else { format!("convert_from({parameter}, 'UTF8')::jsonb") }
    }

    /// SQL reading a data column as BYTEA whatever the variant.
    pub fn data_out(&self, column: &str) -> String {
        if self.binary { column.to_owned() } else { format!("convert_to({column}::text, 'UTF8')") }
    }

    fn render(&self) -> (String, String) {
        let sql = TEMPLATE
            .replace("{{P}}", &self.prefix)
            .replace("{{DATA}}", if self.binary { "BYTEA" } else { "JSONB" });
        let split = sql.find(FUNCTIONS_MARKER).expect("schema.sql marks its functions");
        (sql[..split].to_owned(), sql[split..].to_owned())
    }
}

/// Whether `prefix` is safe to splice into SQL as part of an identifier.
pub(super) fn valid_prefix(prefix: &str) -> bool {
    let mut chars = prefix.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && prefix.len() <= 40
}

/// Creates or checks both variants' objects and sizes the shard table (`active` is the variant
/// in use; the other one is created alongside it).
pub(super) async fn ensure(pool: &Pool, active: &Names, num_shards: i32) -> Result<(), String> {
    let variants = [Names::new(&active.base, false), Names::new(&active.base, true)];
    let client = pool.get().await.map_err(|e| format!("connect: {e}"))?;
    let lock = setup_lock(active);
    client.execute("SELECT pg_advisory_lock($1)", &[&lock]).await.map_err(|e| e.to_string())?;
    let result = async {
        let version = read_version(&client, active).await?;
        if version.is_some_and(|v| v > SCHEMA_VERSION) {
            return Err(format!(
                "{} is at schema version {} but this server knows version {SCHEMA_VERSION}: a newer \
                 server set this database up",
                active.table("schema_version"),
                version.unwrap_or_default()
            ));
        }
        let rendered: Vec<(String, String)> = variants.iter().map(Names::render).collect();
        for (tables, _) in &rendered {
            client.batch_execute(tables).await.map_err(|e| format!("creating tables: {}", db_text(&e)))?;
        }
        for (_, functions) in &rendered {
            client
                .batch_execute(functions)
                .await
                .map_err(|e| format!("creating functions: {}", db_text(&e)))?;
        }
        for names in &variants {
            size_shards(&client, names, num_shards).await?;
            let set =
                format!("UPDATE {} SET schema_version = $1 WHERE id = 1", names.table("schema_version"));
            client.execute(set.as_str(), &[&SCHEMA_VERSION]).await.map_err(|e| e.to_string())?;
        }
        check_partitioned(&client, active).await
    }
    .await;
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&lock]).await;
    result
}

/// The advisory lock id serialising schema and partition setup for one table prefix.
fn setup_lock(names: &Names) -> i64 {
    SETUP_LOCK_SALT ^ i64::from(fnv32(&names.base))
}

/// A database error with the server's message (tokio-postgres' own text is just "db error").
pub(super) fn db_text(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => error.to_string(),
    }
}

fn fnv32(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5_u32, |hash, byte| (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193))
}

/// The stored schema version; `None` on a database without the tables.
async fn read_version(client: &tokio_postgres::Client, names: &Names) -> Result<Option<i32>, String> {
    let query = format!("SELECT schema_version FROM {} WHERE id = 1", names.table("schema_version"));
    match client.query_opt(query.as_str(), &[]).await {
        Ok(row) => Ok(row.map(|row| row.get(0))),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Ok(None),
        Err(e) => Err(format!("reading the schema version: {}", db_text(&e))),
    }
}

/// One shard_lock row per shard, no more: a missing row would let a shard's writes commit out
/// of id order.
async fn size_shards(client: &tokio_postgres::Client, names: &Names, num_shards: i32) -> Result<(), String> {
    let table = names.table("shard_lock");
    let fill = format!(
        "INSERT INTO {table} (shard_id) SELECT generate_series(0, $1::int4 - 1) ON CONFLICT DO NOTHING"
    );
    let trim = format!("DELETE FROM {table} WHERE shard_id >= $1::int4");
    for sql in [fill, trim] {
        client
            .execute(sql.as_str(), &[&num_shards])
            .await
            .map_err(|e| format!("{table}: {}", db_text(&e)))?;
    }
    Ok(())
}

async fn check_partitioned(client: &tokio_postgres::Client, names: &Names) -> Result<(), String> {
    let stream = names.table("stream");
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass($1))",
            &[&stream],
        )
        .await
        .map_err(|e| e.to_string())?;
    if row.get::<_, bool>(0) {
        Ok(())
    } else {
        Err(format!(
            "{stream} exists but is not partitioned by day: drop it (and the other {}* tables)",
            names.prefix
        ))
    }
}

/// The partition of `parent` holding `day` (UTC): `<parent>_YYYY_MM_DD`.
fn partition_name(parent: &str, day: Date) -> String {
    format!("{parent}_{:04}_{:02}_{:02}", day.year(), u8::from(day.month()), day.day())
}

fn day_start(day: Date) -> String {
    format!("{:04}-{:02}-{:02} 00:00:00+00", day.year(), u8::from(day.month()), day.day())
}

/// Creates today's partition and `lookahead` more (UTC days).
pub(super) async fn ensure_partitions(pool: &Pool, names: &Names, lookahead: i64) -> Result<(), String> {
    let client = pool.get().await.map_err(|e| format!("connect: {e}"))?;
    let parent = names.table("stream");
    let today = OffsetDateTime::now_utc().date();
    // Under the setup lock: two nodes creating the same partition at once would collide.
    let mut sql = format!("BEGIN; SELECT pg_advisory_xact_lock({});", setup_lock(names));
    for offset in 0..=lookahead.max(0) {
        let day = today + Days::days(offset);
        sql += &format!(
            "CREATE TABLE IF NOT EXISTS {} PARTITION OF {parent} FOR VALUES FROM ('{}') TO ('{}');",
            partition_name(&parent, day),
            day_start(day),
            day_start(day + Days::days(1))
        );
    }
    sql += "COMMIT;";
    let result =
        client.batch_execute(&sql).await.map_err(|e| format!("partitions of {parent}: {}", db_text(&e)));
    if result.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result
}

/// Drops the stream partitions (named by day) that ended more than `retention_days` ago; 0
/// keeps everything. Partitions named otherwise are someone else's and stay.
pub(super) async fn drop_old_partitions(
    pool: &Pool,
    names: &Names,
    retention_days: i64,
) -> Result<(), String> {
    if retention_days <= 0 {
        return Ok(());
    }
    let client = pool.get().await.map_err(|e| format!("connect: {e}"))?;
    let parent = names.table("stream");
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_inherits i
             JOIN pg_class c ON c.oid = i.inhrelid
             JOIN pg_class p ON p.oid = i.inhparent
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE p.relname = $1 AND n.nspname = current_schema()",
            &[&parent],
        )
        .await
        .map_err(|e| e.to_string())?;
    let cutoff = OffsetDateTime::now_utc() - Days::days(retention_days);
    for row in rows {
        let name: String = row.get(0);
        let Some(day) = partition_day(&name, &parent) else { continue };
        if day.midnight().assume_utc() < cutoff {
            let drop = format!("DROP TABLE IF EXISTS \"{}\"", name.replace('"', "\"\""));
            client.batch_execute(&drop).await.map_err(|e| format!("dropping {name}: {}", db_text(&e)))?;
        }
    }
    Ok(())
}

fn partition_day(name: &str, parent: &str) -> Option<Date> {
    let suffix = name.strip_prefix(parent)?.strip_prefix('_')?;
    let mut parts = suffix.split('_');
    let year: i32 = parts.next()?.parse().ok()?;
    let month: u8 = parts.next()?.parse().ok()?;
    let day: u8 = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Date::from_calendar_date(year, time::Month::try_from(month).ok()?, day).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_centrifugos_layout() {
        let jsonb = Names::new("cf", false);
        assert_eq!(jsonb.table("stream"), "cf_map_stream");
        assert_eq!(jsonb.notify_channel(), "cf_map_stream_notify");
        let binary = Names::new("tenant_", true);
        assert_eq!(binary.table("publish"), "tenant_binary_map_publish");
        assert_eq!(binary.base, "tenant");
        assert_eq!(Names::new("", false).prefix, "cf_map_");
    }

    #[test]
    fn prefixes_are_identifiers() {
        assert!(valid_prefix("cf") && valid_prefix("prod_eu_cf") && valid_prefix("_x1"));
        assert!(
            !valid_prefix("1cf") && !valid_prefix("cf;drop") && !valid_prefix("cf-x") && !valid_prefix("")
        );
    }

    #[test]
    fn partitions_are_named_by_utc_day() {
        let day = Date::from_calendar_date(2026, time::Month::March, 5).unwrap();
        assert_eq!(partition_name("cf_map_stream", day), "cf_map_stream_2026_03_05");
        assert_eq!(day_start(day), "2026-03-05 00:00:00+00");
        assert_eq!(partition_day("cf_map_stream_2026_03_05", "cf_map_stream"), Some(day));
        assert_eq!(partition_day("cf_map_stream_custom", "cf_map_stream"), None);
        assert_eq!(partition_day("cf_map_stream_2026_02_30", "cf_map_stream"), None);
    }

    #[test]
    fn both_variants_render_without_placeholders() {
        for binary in [false, true] {
            let (tables, functions) = Names::new("cf", binary).render();
            assert!(!tables.contains("{{") && !functions.contains("{{"));
            assert!(tables.contains("CREATE TABLE IF NOT EXISTS cf_") && functions.contains("FUNCTION cf_"));
            assert_eq!(functions.contains("BYTEA"), binary);
        }
    }
}
