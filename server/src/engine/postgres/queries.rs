//! The SQL the broker runs, rendered once for the configured variant (table names, and the
//! data columns read and written as BYTEA whatever their type). Reads join the channel's row
//! so a result always starts with its `top_offset, epoch`, from the same snapshot as the rest.

use super::schema::Names;

#[derive(Debug)]
pub(super) struct Queries {
    pub publish: String,
    pub remove: String,
    pub retag: String,
    pub create_channel: String,
    pub state_page: String,
    pub state_key: String,
    pub stream_forward: String,
    pub stream_reverse: String,
    pub stats: String,
    pub clear: String,
    pub outbox: String,
    pub outbox_start: String,
    pub expiring_channels: String,
    pub expire_keys: String,
    pub cleanup_meta: String,
    pub cleanup_idempotency: String,
}

impl Queries {
    pub fn new(n: &Names) -> Self {
        let (meta, state, stream, idem) =
            (n.table("meta"), n.table("state"), n.table("stream"), n.table("idempotency"));
        Self {
            publish: publish(n),
            remove: format!(
                "SELECT result_id, channel_offset, epoch, suppress_reason FROM {}($1, $2, $3::text::interval, \
                 NULL, NULL, $4::text, $5::text::interval, NULL, NULL, $6::int4)",
                n.table("remove")
            ),
            retag: format!("UPDATE {stream} SET tags = $1::text::jsonb WHERE id = $2 AND created_at = NOW()"),
            create_channel: format!(
                "WITH created AS (INSERT INTO {meta} (channel, top_offset, epoch, expires_at) \
                   VALUES ($1, 0, left(md5(gen_random_uuid()::text), 8), NOW() + $2::text::interval) \
                   ON CONFLICT (channel) DO NOTHING RETURNING channel) \
                 DELETE FROM {state} WHERE channel = $1 AND EXISTS (SELECT 1 FROM created)"
            ),
            state_page: state_read(
                n,
                "LEFT JOIN LATERAL (SELECT * FROM {state} x WHERE x.channel = m.channel \
                AND x.key > $2 ORDER BY x.key LIMIT $3::int8) s ON TRUE",
            ),
            state_key: state_read(n, "LEFT JOIN {state} s ON s.channel = m.channel AND s.key = $2"),
            stream_forward: stream_read(n, "ASC"),
            stream_reverse: stream_read(n, "DESC"),
            stats: format!("SELECT count(*) FROM {state} WHERE channel = $1"),
            clear: format!(
                "WITH a AS (DELETE FROM {stream} WHERE channel = $1), b AS (DELETE FROM {state} WHERE channel = $1), \
                 c AS (DELETE FROM {idem} WHERE channel = $1) DELETE FROM {meta} WHERE channel = $1"
            ),
            outbox: outbox(n),
            outbox_start: format!("SELECT COALESCE(max(id), 0)::int8 FROM {stream}"),
            expiring_channels: format!(
                "SELECT DISTINCT channel FROM {state} WHERE expires_at <= NOW() LIMIT 100"
            ),
            expire_keys: format!(
                "SELECT count(*) FROM {}(1000, $1::int4, $2::text::interval, $3::text)",
                n.table("expire_keys")
            ),
            cleanup_meta: format!(
                "DELETE FROM {meta} WHERE channel IN (SELECT channel FROM {meta} WHERE expires_at < NOW() LIMIT $1::int8)"
            ),
            cleanup_idempotency: format!(
                "DELETE FROM {idem} WHERE (channel, idempotency_key) IN \
                 (SELECT channel, idempotency_key FROM {idem} WHERE expires_at < NOW() LIMIT $1::int8)"
            ),
        }
    }
}

/// `<prefix>publish` with every argument typed, so one prepared statement serves every call.
fn publish(n: &Names) -> String {
    format!(
        "SELECT result_id, channel_offset, epoch, suppress_reason FROM {}($1, $2, {}, $4::text::jsonb, \
         $5::text::interval, $6::text::interval, $7::text, $8::int8, $9::text, $10::int8, $11::text, \
         $12::text, $13::text::interval, $14::bool, $15::text, $16::text, {}, {}, $19::bool, $20::int4)",
        n.table("publish"),
        n.data_in("$3::bytea"),
        n.data_in("$17::bytea"),
        n.data_in("$18::bytea")
    )
}

/// State rows (`s`, joined by `join` with `{state}` standing for the table) after the channel's
/// position: top, epoch, key, data, tags, offset, client, user, conn_info, chan_info, time.
fn state_read(n: &Names, join: &str) -> String {
    format!(
        "SELECT m.top_offset, m.epoch, s.key, {}, s.tags::text, s.key_offset, s.client_id, s.user_id, {}, {}, \
         (extract(epoch FROM s.updated_at) * 1000)::int8 FROM {} m {} WHERE m.channel = $1",
        n.data_out("s.data"),
        n.data_out("s.conn_info"),
        n.data_out("s.chan_info"),
        n.table("meta"),
        join.replace("{state}", &n.table("state"))
    )
}

/// Stream rows of the channel's current epoch in `order`, within the window (`$2` after, `$3`
/// newest entries, `$4` before, `$5` retention, `$6` limit); columns as in [`state_read`] plus
/// `removed`.
fn stream_read(n: &Names, order: &str) -> String {
    format!(
        "SELECT m.top_offset, m.epoch, x.key, {}, x.tags::text, x.channel_offset, x.client_id, \
         x.user_id, {}, {}, (extract(epoch FROM x.created_at) * 1000)::int8, x.removed \
         FROM {} m LEFT JOIN LATERAL (SELECT * FROM {} st \
           WHERE st.channel = m.channel AND st.epoch = m.epoch \
           AND st.channel_offset > GREATEST($2::int8, m.top_offset - $3::int8) \
           AND st.channel_offset < COALESCE($4::int8, m.top_offset + 1) \
           AND st.created_at > NOW() - $5::text::interval \
           ORDER BY st.channel_offset {order} LIMIT $6::int8) x ON TRUE \
         WHERE m.channel = $1",
        n.data_out("x.data"),
        n.data_out("x.conn_info"),
        n.data_out("x.chan_info"),
        n.table("meta"),
        n.table("stream")
    )
}

/// One shard's rows after a cursor, in id order (see `workers::outbox_row` for the columns).
fn outbox(n: &Names) -> String {
    format!(
        "SELECT id, channel, channel_offset, epoch, key, {}, tags::text, removed, client_id, user_id, {}, {}, \
         {}, (extract(epoch FROM created_at) * 1000)::int8 \
         FROM {} WHERE shard_id = $1::int2 AND id > $2::int8 ORDER BY id LIMIT $3::int8",
        n.data_out("data"),
        n.data_out("conn_info"),
        n.data_out("chan_info"),
        n.data_out("prev_data"),
        n.table("stream")
    )
}
