-- Spinwire's PostgreSQL map broker schema, written for the layout Centrifugo v6.9 uses
-- (`map_broker.type: postgres`), so that either server can run on a database the other set up,
-- and a backend can write map state from its own transactions by calling {{P}}publish.
--
-- Rendered twice by schema.rs: {{P}} becomes `<table_prefix>_map_` with {{DATA}} = JSONB, and
-- `<table_prefix>_binary_map_` with {{DATA}} = BYTEA (`binary_data: true`). Every statement is
-- idempotent. The table, column and function names, the function signatures and the
-- suppression reasons are the compatibility contract; the bodies are Spinwire's own.
--
-- Locking order everywhere: the channel's shard row in {{P}}shard_lock, then its {{P}}meta row,
-- then {{P}}state rows. Holding the shard row until commit makes stream ids commit in id order
-- within a shard, which is what lets every node follow a shard with a plain `id > cursor`.

-- @tables

-- Every change, partitioned by day (the partition key must be part of the primary key).
CREATE TABLE IF NOT EXISTS {{P}}stream (
    id              BIGSERIAL,
    channel         TEXT NOT NULL,
    channel_offset  BIGINT NOT NULL,
    epoch           TEXT NOT NULL DEFAULT '',
    key             TEXT NOT NULL,
    data            {{DATA}},
    tags            JSONB,
    client_id       TEXT,
    user_id         TEXT,
    conn_info       {{DATA}},
    chan_info       {{DATA}},
    removed         BOOLEAN DEFAULT FALSE,
    prev_data       {{DATA}},
    created_at      TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    shard_id        SMALLINT NOT NULL DEFAULT 0,
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);

CREATE INDEX IF NOT EXISTS {{P}}stream_channel_epoch_offset_idx ON {{P}}stream (channel, epoch, channel_offset);
CREATE INDEX IF NOT EXISTS {{P}}stream_channel_id_idx ON {{P}}stream (channel, id DESC);
CREATE INDEX IF NOT EXISTS {{P}}stream_shard_id_idx ON {{P}}stream (shard_id, id);
CREATE INDEX IF NOT EXISTS {{P}}stream_created_at_idx ON {{P}}stream (created_at);

-- The current value of every key.
CREATE TABLE IF NOT EXISTS {{P}}state (
    channel             TEXT NOT NULL,
    key                 TEXT NOT NULL,
    data                {{DATA}},
    tags                JSONB,
    client_id           TEXT,
    user_id             TEXT,
    conn_info           {{DATA}},
    chan_info           {{DATA}},
    key_version         BIGINT DEFAULT 0,
    key_version_epoch   TEXT,
    key_offset          BIGINT NOT NULL,
    expires_at          TIMESTAMPTZ,
    created_at          TIMESTAMPTZ DEFAULT NOW(),
    updated_at          TIMESTAMPTZ DEFAULT NOW(),
    PRIMARY KEY (channel, key)
);

CREATE INDEX IF NOT EXISTS {{P}}state_expires_idx ON {{P}}state (expires_at) WHERE expires_at IS NOT NULL;

-- Each channel's epoch and top offset; a channel without a row has no epoch yet.
CREATE TABLE IF NOT EXISTS {{P}}meta (
    channel         TEXT PRIMARY KEY,
    top_offset      BIGINT NOT NULL DEFAULT 0,
    epoch           TEXT NOT NULL DEFAULT '',
    created_at      TIMESTAMPTZ DEFAULT NOW(),
    updated_at      TIMESTAMPTZ DEFAULT NOW(),
    expires_at      TIMESTAMPTZ
);

CREATE INDEX IF NOT EXISTS {{P}}meta_expires_idx ON {{P}}meta (expires_at) WHERE expires_at IS NOT NULL;

-- Results of idempotent writes, answered again for a repeated key (with the epoch they had).
CREATE TABLE IF NOT EXISTS {{P}}idempotency (
    channel         TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    result_offset   BIGINT NOT NULL,
    result_epoch    TEXT NOT NULL,
    result_id       BIGINT NOT NULL,
    expires_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (channel, idempotency_key)
);

CREATE INDEX IF NOT EXISTS {{P}}idempotency_expires_idx ON {{P}}idempotency (expires_at);

-- One row per shard (num_shards rows), locked by every write of a channel in that shard.
CREATE TABLE IF NOT EXISTS {{P}}shard_lock (
    shard_id SMALLINT PRIMARY KEY
);

CREATE TABLE IF NOT EXISTS {{P}}schema_version (
    id              INTEGER PRIMARY KEY,
    schema_version  INTEGER NOT NULL
);
INSERT INTO {{P}}schema_version (id, schema_version) VALUES (1, 1) ON CONFLICT (id) DO NOTHING;

-- @functions

-- The shard of a channel: hashtext modulo the shard count (the shard_lock row count when the
-- caller does not say), then that shard's row locked for the rest of the transaction.
CREATE OR REPLACE FUNCTION {{P}}lock_shard(p_channel TEXT, p_num_shards INTEGER)
RETURNS INTEGER AS $$
DECLARE
    shards INTEGER := p_num_shards;
    shard INTEGER;
BEGIN
    IF shards IS NULL THEN
        SELECT count(*)::INTEGER INTO shards FROM {{P}}shard_lock;
    END IF;
    IF shards <= 0 THEN
        RAISE EXCEPTION '{{P}}shard_lock has no rows: the schema was not initialised';
    END IF;
    shard := abs(hashtext(p_channel)::BIGINT) % shards;
    PERFORM 1 FROM {{P}}shard_lock WHERE shard_id = shard FOR UPDATE;
    RETURN shard;
END;
$$ LANGUAGE plpgsql;

-- Writes one key. Checks run in the order idempotency, version, key mode, expected position; the
-- first that fails answers `suppressed` with its reason and changes nothing (except that an
-- `if_new` miss may extend the key's and the channel's TTLs when asked).
CREATE OR REPLACE FUNCTION {{P}}publish(
    p_channel TEXT,
    p_key TEXT,
    p_data {{DATA}},
    p_tags JSONB DEFAULT NULL,
    p_key_ttl INTERVAL DEFAULT NULL,
    p_meta_ttl INTERVAL DEFAULT NULL,
    p_key_mode TEXT DEFAULT NULL,
    p_expected_offset BIGINT DEFAULT NULL,
    p_expected_epoch TEXT DEFAULT NULL,
    p_key_version BIGINT DEFAULT NULL,
    p_key_version_epoch TEXT DEFAULT NULL,
    p_idempotency_key TEXT DEFAULT NULL,
    p_idempotency_ttl INTERVAL DEFAULT NULL,
    p_use_delta BOOLEAN DEFAULT FALSE,
    p_client_id TEXT DEFAULT NULL,
    p_user_id TEXT DEFAULT NULL,
    p_conn_info {{DATA}} DEFAULT NULL,
    p_chan_info {{DATA}} DEFAULT NULL,
    p_refresh_ttl_on_suppress BOOLEAN DEFAULT FALSE,
    p_num_shards INTEGER DEFAULT NULL
) RETURNS TABLE(
    result_id BIGINT,
    channel_offset BIGINT,
    epoch TEXT,
    suppressed BOOLEAN,
    suppress_reason TEXT,
    current_data {{DATA}},
    current_offset BIGINT
) AS $$
DECLARE
    shard INTEGER;
    top BIGINT;
    chan_epoch TEXT;
    fresh BOOLEAN;
    old {{P}}state%ROWTYPE;
    have_old BOOLEAN;
    remembered {{P}}idempotency%ROWTYPE;
    new_id BIGINT;
BEGIN
    IF p_meta_ttl IS NOT NULL AND (p_key_ttl IS NULL OR p_meta_ttl < p_key_ttl) THEN
        RAISE EXCEPTION 'p_meta_ttl must be NULL when keys never expire, and at least p_key_ttl otherwise';
    END IF;
    shard := {{P}}lock_shard(p_channel, p_num_shards);

    -- The channel's row, created with a new epoch if missing (the no-op update locks an existing
    -- one). A channel created here starts without state: rows left by a forgotten epoch go.
    INSERT INTO {{P}}meta AS m (channel, top_offset, epoch, updated_at)
    VALUES (p_channel, 0, left(md5(gen_random_uuid()::TEXT), 8), NOW())
    ON CONFLICT (channel) DO UPDATE SET updated_at = m.updated_at
    RETURNING m.top_offset, m.epoch, (m.xmax = 0) INTO top, chan_epoch, fresh;
    IF fresh THEN
        DELETE FROM {{P}}state s WHERE s.channel = p_channel;
    END IF;

    IF p_idempotency_key IS NOT NULL THEN
        SELECT * INTO remembered FROM {{P}}idempotency i
        WHERE i.channel = p_channel AND i.idempotency_key = p_idempotency_key AND i.expires_at > NOW();
        IF FOUND THEN
            RETURN QUERY SELECT NULL::BIGINT, remembered.result_offset, remembered.result_epoch, TRUE,
                'idempotency'::TEXT, NULL::{{DATA}}, NULL::BIGINT;
            RETURN;
        END IF;
    END IF;

    SELECT * INTO old FROM {{P}}state s WHERE s.channel = p_channel AND s.key = p_key;
    have_old := FOUND;

    -- A stale version: not newer than the stored one, in the same version epoch (an empty or
    -- missing epoch on the write matches any).
    IF have_old AND p_key_version IS NOT NULL AND p_key <> '' AND COALESCE(old.key_version, 0) > 0
       AND (COALESCE(p_key_version_epoch, '') = '' OR p_key_version_epoch = old.key_version_epoch)
       AND p_key_version <= old.key_version THEN
        RETURN QUERY SELECT NULL::BIGINT, top, chan_epoch, TRUE, 'version'::TEXT, NULL::{{DATA}}, NULL::BIGINT;
        RETURN;
    END IF;

    -- Key modes look at the row as stored: a key past its TTL but not yet removed still exists.
    IF p_key_mode = 'if_new' AND have_old THEN
        IF p_refresh_ttl_on_suppress AND p_key_ttl IS NOT NULL THEN
            UPDATE {{P}}state s SET expires_at = NOW() + p_key_ttl, updated_at = NOW()
            WHERE s.channel = p_channel AND s.key = p_key;
            IF p_meta_ttl IS NOT NULL THEN
                UPDATE {{P}}meta m SET expires_at = NOW() + p_meta_ttl, updated_at = NOW()
                WHERE m.channel = p_channel;
            END IF;
        END IF;
        RETURN QUERY SELECT NULL::BIGINT, top, chan_epoch, TRUE, 'key_exists'::TEXT, NULL::{{DATA}}, NULL::BIGINT;
        RETURN;
    END IF;
    IF p_key_mode = 'if_exists' AND NOT have_old THEN
        RETURN QUERY SELECT NULL::BIGINT, top, chan_epoch, TRUE, 'key_not_found'::TEXT, NULL::{{DATA}}, NULL::BIGINT;
        RETURN;
    END IF;

    -- Compare-and-set on the key's offset (and the channel's epoch when given).
    IF p_expected_offset IS NOT NULL AND (NOT have_old OR old.key_offset <> p_expected_offset
        OR (p_expected_epoch IS NOT NULL AND p_expected_epoch <> chan_epoch)) THEN
        RETURN QUERY SELECT NULL::BIGINT, top, chan_epoch, TRUE, 'position_mismatch'::TEXT,
            CASE WHEN have_old THEN old.data END, CASE WHEN have_old THEN old.key_offset END;
        RETURN;
    END IF;

    UPDATE {{P}}meta m SET top_offset = m.top_offset + 1, updated_at = NOW(),
        expires_at = CASE WHEN p_meta_ttl IS NULL THEN m.expires_at ELSE NOW() + p_meta_ttl END
    WHERE m.channel = p_channel
    RETURNING m.top_offset INTO top;

    -- A write without a version keeps the stored one, so a late older version stays refused.
    INSERT INTO {{P}}state AS s (channel, key, data, tags, client_id, user_id, conn_info, chan_info,
        key_version, key_version_epoch, key_offset, expires_at, updated_at)
    VALUES (p_channel, p_key, p_data, p_tags, p_client_id, p_user_id, p_conn_info, p_chan_info,
        p_key_version, p_key_version_epoch, top, NOW() + p_key_ttl, NOW())
    ON CONFLICT (channel, key) DO UPDATE SET
        data = EXCLUDED.data, tags = EXCLUDED.tags, client_id = EXCLUDED.client_id,
        user_id = EXCLUDED.user_id, conn_info = EXCLUDED.conn_info, chan_info = EXCLUDED.chan_info,
        key_version = COALESCE(EXCLUDED.key_version, s.key_version),
        key_version_epoch = COALESCE(EXCLUDED.key_version_epoch, s.key_version_epoch),
        key_offset = EXCLUDED.key_offset, expires_at = EXCLUDED.expires_at, updated_at = NOW();

    INSERT INTO {{P}}stream AS st (channel, channel_offset, epoch, key, data, tags, client_id, user_id,
        conn_info, chan_info, prev_data, shard_id)
    VALUES (p_channel, top, chan_epoch, p_key, p_data, p_tags, p_client_id, p_user_id,
        p_conn_info, p_chan_info,
        CASE WHEN p_use_delta AND have_old AND p_key <> '' THEN old.data END, shard)
    RETURNING st.id INTO new_id;

    IF p_idempotency_key IS NOT NULL THEN
        INSERT INTO {{P}}idempotency (channel, idempotency_key, result_offset, result_epoch, result_id, expires_at)
        VALUES (p_channel, p_idempotency_key, top, chan_epoch, new_id,
            NOW() + COALESCE(p_idempotency_ttl, INTERVAL '5 minutes'))
        ON CONFLICT DO NOTHING;
    END IF;

    PERFORM pg_notify('{{P}}stream_notify', '');
    RETURN QUERY SELECT new_id, top, chan_epoch, FALSE, NULL::TEXT, NULL::{{DATA}}, NULL::BIGINT;
END;
$$ LANGUAGE plpgsql;

-- {{P}}publish for callers that want an error (and their transaction rolled back) instead of
-- a suppressed result.
CREATE OR REPLACE FUNCTION {{P}}publish_strict(
    p_channel TEXT,
    p_key TEXT,
    p_data {{DATA}},
    p_tags JSONB DEFAULT NULL,
    p_key_ttl INTERVAL DEFAULT NULL,
    p_meta_ttl INTERVAL DEFAULT NULL,
    p_key_mode TEXT DEFAULT NULL,
    p_expected_offset BIGINT DEFAULT NULL,
    p_expected_epoch TEXT DEFAULT NULL,
    p_key_version BIGINT DEFAULT NULL,
    p_key_version_epoch TEXT DEFAULT NULL,
    p_idempotency_key TEXT DEFAULT NULL,
    p_idempotency_ttl INTERVAL DEFAULT NULL,
    p_use_delta BOOLEAN DEFAULT FALSE,
    p_client_id TEXT DEFAULT NULL,
    p_user_id TEXT DEFAULT NULL,
    p_conn_info {{DATA}} DEFAULT NULL,
    p_chan_info {{DATA}} DEFAULT NULL,
    p_refresh_ttl_on_suppress BOOLEAN DEFAULT FALSE,
    p_num_shards INTEGER DEFAULT NULL
) RETURNS TABLE(
    result_id BIGINT,
    channel_offset BIGINT,
    epoch TEXT
) AS $$
DECLARE
    r RECORD;
BEGIN
    SELECT * INTO r FROM {{P}}publish(p_channel, p_key, p_data, p_tags, p_key_ttl, p_meta_ttl,
        p_key_mode, p_expected_offset, p_expected_epoch, p_key_version, p_key_version_epoch,
        p_idempotency_key, p_idempotency_ttl, p_use_delta, p_client_id, p_user_id, p_conn_info,
        p_chan_info, p_refresh_ttl_on_suppress, p_num_shards);
    IF r.suppressed THEN
        IF r.suppress_reason IN ('key_exists', 'idempotency') THEN
            RAISE EXCEPTION '{{P}}publish: % on %.%', r.suppress_reason, p_channel, p_key
                USING ERRCODE = 'unique_violation';
        ELSIF r.suppress_reason = 'key_not_found' THEN
            RAISE EXCEPTION '{{P}}publish: key not found: %.%', p_channel, p_key
                USING ERRCODE = 'no_data_found';
        ELSIF r.suppress_reason = 'position_mismatch' THEN
            RAISE EXCEPTION '{{P}}publish: expected position does not match on %.%', p_channel, p_key
                USING ERRCODE = 'serialization_failure', DETAIL = COALESCE(r.current_data::TEXT, '');
        ELSE
            RAISE EXCEPTION '{{P}}publish: % on %.%', r.suppress_reason, p_channel, p_key
                USING ERRCODE = 'serialization_failure';
        END IF;
    END IF;
    RETURN QUERY SELECT r.result_id, r.channel_offset, r.epoch;
END;
$$ LANGUAGE plpgsql;

-- Removes one key: a `removed` row in the stream carrying the entry's tags. A channel without
-- a row, or a key missing (or past its TTL), is `key_not_found`.
CREATE OR REPLACE FUNCTION {{P}}remove(
    p_channel TEXT,
    p_key TEXT,
    p_meta_ttl INTERVAL DEFAULT NULL,
    p_expected_offset BIGINT DEFAULT NULL,
    p_expected_epoch TEXT DEFAULT NULL,
    p_idempotency_key TEXT DEFAULT NULL,
    p_idempotency_ttl INTERVAL DEFAULT NULL,
    p_client_id TEXT DEFAULT NULL,
    p_user_id TEXT DEFAULT NULL,
    p_num_shards INTEGER DEFAULT NULL
) RETURNS TABLE(
    result_id BIGINT,
    channel_offset BIGINT,
    epoch TEXT,
    suppressed BOOLEAN,
    suppress_reason TEXT,
    current_data {{DATA}},
    current_offset BIGINT
) AS $$
DECLARE
    shard INTEGER;
    top BIGINT;
    chan_epoch TEXT;
    old {{P}}state%ROWTYPE;
    have_old BOOLEAN;
    remembered {{P}}idempotency%ROWTYPE;
    new_id BIGINT;
BEGIN
    shard := {{P}}lock_shard(p_channel, p_num_shards);
    SELECT m.top_offset, m.epoch INTO top, chan_epoch FROM {{P}}meta m WHERE m.channel = p_channel FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT NULL::BIGINT, 0::BIGINT, ''::TEXT, TRUE, 'key_not_found'::TEXT, NULL::{{DATA}}, NULL::BIGINT;
        RETURN;
    END IF;

    IF p_idempotency_key IS NOT NULL THEN
        SELECT * INTO remembered FROM {{P}}idempotency i
        WHERE i.channel = p_channel AND i.idempotency_key = p_idempotency_key AND i.expires_at > NOW();
        IF FOUND THEN
            RETURN QUERY SELECT NULL::BIGINT, remembered.result_offset, remembered.result_epoch, TRUE,
                'idempotency'::TEXT, NULL::{{DATA}}, NULL::BIGINT;
            RETURN;
        END IF;
    END IF;

    SELECT * INTO old FROM {{P}}state s WHERE s.channel = p_channel AND s.key = p_key;
    have_old := FOUND;
    IF p_expected_offset IS NOT NULL AND (NOT have_old OR old.key_offset <> p_expected_offset
        OR (p_expected_epoch IS NOT NULL AND p_expected_epoch <> chan_epoch)) THEN
        RETURN QUERY SELECT NULL::BIGINT, top, chan_epoch, TRUE, 'position_mismatch'::TEXT,
            CASE WHEN have_old THEN old.data END, CASE WHEN have_old THEN old.key_offset END;
        RETURN;
    END IF;
    IF NOT have_old OR (old.expires_at IS NOT NULL AND old.expires_at <= NOW()) THEN
        RETURN QUERY SELECT NULL::BIGINT, top, chan_epoch, TRUE, 'key_not_found'::TEXT, NULL::{{DATA}}, NULL::BIGINT;
        RETURN;
    END IF;

    UPDATE {{P}}meta m SET top_offset = m.top_offset + 1, updated_at = NOW(),
        expires_at = CASE WHEN p_meta_ttl IS NULL THEN m.expires_at ELSE NOW() + p_meta_ttl END
    WHERE m.channel = p_channel
    RETURNING m.top_offset INTO top;
    DELETE FROM {{P}}state s WHERE s.channel = p_channel AND s.key = p_key;
    INSERT INTO {{P}}stream AS st (channel, channel_offset, epoch, key, removed, client_id, user_id, shard_id, tags)
    VALUES (p_channel, top, chan_epoch, p_key, TRUE, p_client_id, p_user_id, shard, old.tags)
    RETURNING st.id INTO new_id;

    IF p_idempotency_key IS NOT NULL THEN
        INSERT INTO {{P}}idempotency (channel, idempotency_key, result_offset, result_epoch, result_id, expires_at)
        VALUES (p_channel, p_idempotency_key, top, chan_epoch, new_id,
            NOW() + COALESCE(p_idempotency_ttl, INTERVAL '5 minutes'))
        ON CONFLICT DO NOTHING;
    END IF;

    PERFORM pg_notify('{{P}}stream_notify', '');
    RETURN QUERY SELECT new_id, top, chan_epoch, FALSE, NULL::TEXT, NULL::{{DATA}}, NULL::BIGINT;
END;
$$ LANGUAGE plpgsql;

-- {{P}}remove raising no_data_found instead of answering a suppressed result.
CREATE OR REPLACE FUNCTION {{P}}remove_strict(
    p_channel TEXT,
    p_key TEXT,
    p_meta_ttl INTERVAL DEFAULT NULL,
    p_expected_offset BIGINT DEFAULT NULL,
    p_expected_epoch TEXT DEFAULT NULL,
    p_idempotency_key TEXT DEFAULT NULL,
    p_idempotency_ttl INTERVAL DEFAULT NULL,
    p_client_id TEXT DEFAULT NULL,
    p_user_id TEXT DEFAULT NULL,
    p_num_shards INTEGER DEFAULT NULL
) RETURNS TABLE(
    result_id BIGINT,
    channel_offset BIGINT,
    epoch TEXT
) AS $$
DECLARE
    r RECORD;
BEGIN
    SELECT * INTO r FROM {{P}}remove(p_channel, p_key, p_meta_ttl, p_expected_offset, p_expected_epoch,
        p_idempotency_key, p_idempotency_ttl, p_client_id, p_user_id, p_num_shards);
    IF r.suppressed THEN
        RAISE EXCEPTION '{{P}}remove: % on %.%', r.suppress_reason, p_channel, p_key
            USING ERRCODE = 'no_data_found';
    END IF;
    RETURN QUERY SELECT r.result_id, r.channel_offset, r.epoch;
END;
$$ LANGUAGE plpgsql;

-- Removes keys past their TTL (of one channel, or of any while the batch lasts), each as a
-- `removed` stream row with the entry's tags, and returns what it removed.
CREATE OR REPLACE FUNCTION {{P}}expire_keys(
    p_batch_size INT DEFAULT 1000,
    p_num_shards INTEGER DEFAULT NULL,
    p_meta_ttl INTERVAL DEFAULT NULL,
    p_channel TEXT DEFAULT NULL
) RETURNS TABLE(
    out_channel TEXT,
    out_key TEXT,
    out_offset BIGINT,
    out_epoch TEXT
) AS $$
DECLARE
    chan TEXT;
    shard INTEGER;
    top BIGINT;
    chan_epoch TEXT;
    budget INT := p_batch_size;
    keys TEXT[];
    key_tags JSONB[];
    n INT;
    any_removed BOOLEAN := FALSE;
BEGIN
    FOR chan IN
        SELECT DISTINCT s.channel FROM {{P}}state s
        WHERE s.expires_at <= NOW() AND (p_channel IS NULL OR s.channel = p_channel)
    LOOP
        EXIT WHEN budget <= 0;
        shard := {{P}}lock_shard(chan, p_num_shards);
        SELECT m.top_offset, m.epoch INTO top, chan_epoch FROM {{P}}meta m WHERE m.channel = chan FOR UPDATE;
        IF NOT FOUND THEN
            -- A forgotten channel: its leftovers go without announcements.
            DELETE FROM {{P}}state s WHERE s.channel = chan AND s.expires_at <= NOW();
            CONTINUE;
        END IF;

        SELECT array_agg(e.key ORDER BY e.key), array_agg(COALESCE(e.tags, '{}'::JSONB) ORDER BY e.key)
        INTO keys, key_tags
        FROM (SELECT s.key, s.tags FROM {{P}}state s
              WHERE s.channel = chan AND s.expires_at <= NOW()
              ORDER BY s.key LIMIT budget FOR UPDATE SKIP LOCKED) e;
        n := COALESCE(array_length(keys, 1), 0);
        CONTINUE WHEN n = 0;

        UPDATE {{P}}meta m SET top_offset = m.top_offset + n, updated_at = NOW(),
            expires_at = CASE WHEN p_meta_ttl IS NULL THEN m.expires_at ELSE NOW() + p_meta_ttl END
        WHERE m.channel = chan;
        DELETE FROM {{P}}state s WHERE s.channel = chan AND s.key = ANY(keys);
        INSERT INTO {{P}}stream (channel, channel_offset, epoch, key, removed, shard_id, tags)
        SELECT chan, top + k.i, chan_epoch, k.key, TRUE, shard, k.tags
        FROM unnest(keys, key_tags) WITH ORDINALITY AS k(key, tags, i);

        RETURN QUERY SELECT chan, k.key, top + k.i, chan_epoch
        FROM unnest(keys) WITH ORDINALITY AS k(key, i);
        any_removed := TRUE;
        budget := budget - n;
    END LOOP;
    IF any_removed THEN
        PERFORM pg_notify('{{P}}stream_notify', '');
    END IF;
END;
$$ LANGUAGE plpgsql;
