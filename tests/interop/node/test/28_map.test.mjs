// Map subscriptions with npm centrifuge 5.8 (newMapSubscription, newMapClientsSubscription):
// paged initial state, live changes and removals, key TTL, recovery after a reconnect or a
// resubscribe, unrecoverable positions, client keys, presence as a map, tags filters and delta.
// The namespaces are those of the SDK's own integration config (centrifugo_test.json). The
// whole suite runs on the memory map broker and on PostgreSQL (Centrifugo's tables); the last
// part has two nodes on one database and a backend writing inside its own SQL transaction.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  PROTOCOLS, NAMESPACES, startServer, tracked, newClient, connectClient, connToken, api,
  waitForEvent, waitForCount, collect, closeAll, uid, delay,
} from '../harness.mjs';
import { Postgres } from '../infra.mjs';

const MAP_NAMESPACES = [
  {
    name: 'streamless', subscription_type: 'map', allow_subscribe_for_client: true,
    map: { mode: 'ephemeral', key_ttl: '60s', allow_publish_for_client: true, allow_remove_for_client: true },
  },
  {
    name: 'positioned', subscription_type: 'map', allow_subscribe_for_client: true,
    map: { mode: 'persistent', allow_publish_for_client: true, allow_remove_for_client: true },
  },
  {
    name: 'smallstream', subscription_type: 'map', allow_subscribe_for_client: true,
    map: { mode: 'persistent', stream_size: 2, stream_ttl: '60s', allow_publish_for_client: true, allow_remove_for_client: true },
  },
  {
    name: 'recov', subscription_type: 'map', allow_subscribe_for_client: true,
    map: { mode: 'recoverable', key_ttl: '2s', allow_publish_for_client: true },
  },
  {
    name: 'mapdelta', subscription_type: 'map', allow_subscribe_for_client: true,
    allowed_delta_types: ['fossil'], delta_publish: true,
    map: { mode: 'persistent', allow_publish_for_client: true, allow_remove_for_client: true },
  },
  {
    name: 'shortttl', subscription_type: 'map', allow_subscribe_for_client: true,
    map: { mode: 'ephemeral', key_ttl: '2s', allow_publish_for_client: true, allow_remove_for_client: true },
  },
  {
    name: 'clientkey', subscription_type: 'map', allow_subscribe_for_client: true,
    map: { mode: 'ephemeral', key_ttl: '60s', client_key: 'client_id', allow_publish_for_subscriber: true },
  },
  {
    name: 'prestest', subscription_type: 'map', allow_subscribe_for_client: true,
    map_clients_presence_channel_prefix: 'prescli:',
    map: { mode: 'ephemeral', key_ttl: '60s', allow_publish_for_client: true },
  },
  {
    name: 'prescli', subscription_type: 'map_clients', allow_subscribe_for_client: true,
    map: { mode: 'ephemeral', key_ttl: '60s' },
  },
  {
    name: 'tagged', subscription_type: 'map', allow_subscribe_for_client: true, allow_tags_filter: true,
    map: { mode: 'persistent', allow_publish_for_client: true, allow_remove_for_client: true },
  },
];

const channelOf = (ns, proto) => `${ns}:${uid('m-')}-${proto.name}`;

const postgresMapBroker = pg => ({ map_broker: { type: 'postgres', postgres: { dsn: pg.dsn, use_notify: true } } });

for (const broker of ['memory', 'postgres']) describe(`map subscriptions (npm centrifuge, ${broker} map broker)`, () => {
  let server;
  let pg;
  before(async () => {
    pg = broker === 'postgres' ? await Postgres.start() : null;
    server = await startServer({
      channel: { namespaces: [...NAMESPACES, ...MAP_NAMESPACES] },
      ...(pg ? postgresMapBroker(pg) : {}),
    });
  });
  after(async () => {
    if (server) await server.stop();
    if (pg) await pg.stop();
  });

  const mapPublish = (channel, key, data, extra = {}) => api(server, 'map_publish', { channel, key, data, ...extra });
  const mapRemove = (channel, key) => api(server, 'map_remove', { channel, key });

  async function connected(proto) {
    const client = newClient(server, proto, { token: connToken(server, uid('map-user-')) });
    const ctx = await connectClient(client);
    return { client, clientId: ctx.client };
  }

  async function subscribeMap(client, channel, options = {}, factory = 'newMapSubscription') {
    const sub = client[factory](channel, options);
    const subscribed = waitForEvent(sub, 'subscribed');
    const synced = waitForEvent(sub, 'sync');
    sub.subscribe();
    return { sub, subscribed: await subscribed, synced: await synced };
  }

  for (const proto of PROTOCOLS) {
    const value = data => proto.decode(data);

    test(`an empty map and a seeded one arrive in sync [${proto.name}]`, tracked(() => server, async () => {
      const { client } = await connected(proto);
      try {
        const empty = await subscribeMap(client, channelOf('streamless', proto));
        assert.deepEqual(empty.synced.entries, []);
        const channel = channelOf('streamless', proto);
        for (const k of ['k1', 'k2', 'k3']) await mapPublish(channel, k, { v: k });
        const seeded = await subscribeMap(client, channel);
        assert.equal(seeded.subscribed.state.length, 3);
        assert.deepEqual(seeded.synced.entries.map(e => e.key).sort(), ['k1', 'k2', 'k3']);
        for (const entry of seeded.synced.entries) {
          assert.deepEqual(value(entry.data), { v: entry.key });
          assert.equal(entry.removed, undefined, 'snapshot entries carry no removed flag');
          assert.equal(entry.score, undefined);
        }
        assert.equal(seeded.subscribed.recoverable, false, 'ephemeral maps are not recoverable');
      } finally {
        closeAll(client);
      }
    }));

    test(`paged initial state: 250 keys in pages of 100, writes during paging included [${proto.name}]`, tracked(() => server, async () => {
      const { client } = await connected(proto);
      try {
        for (const ns of ['positioned', 'streamless']) {
          const channel = channelOf(ns, proto);
          for (let i = 0; i < 250; i++) await mapPublish(channel, `key-${String(i).padStart(3, '0')}`, { i });
          const sub = client.newMapSubscription(channel, { pageSize: 100 });
          const updates = collect(sub, 'update');
          const synced = waitForEvent(sub, 'sync', { timeoutMs: 10000 });
          sub.subscribe();
          // Writes racing the paging: a new key and a changed one.
          await mapPublish(channel, 'key-new', { i: -1 });
          await mapPublish(channel, 'key-000', { i: 1000 });
          const { entries } = await synced;
          assert.ok(entries.length >= 250, `the snapshot holds every key: ${entries.length}`);
          const byKey = new Map(entries.map(e => [e.key, value(e.data)]));
          // Either in the snapshot or as a later update: wait until the state converged.
          const final = () => {
            const state = new Map(byKey);
            for (const u of updates) state.set(u.key, value(u.data));
            return state;
          };
          await waitFor(() => final().size === 251 && final().get('key-000').i === 1000, `${ns} converges`);
        }
      } finally {
        closeAll(client);
      }
    }));

    test(`live changes and removals, from the API and from the SDK [${proto.name}]`, tracked(() => server, async () => {
      const { client } = await connected(proto);
      try {
        const channel = channelOf('streamless', proto);
        const { sub } = await subscribeMap(client, channel);
        const updates = collect(sub, 'update');
        await mapPublish(channel, 'live_key', { hello: 'world' });
        await mapRemove(channel, 'live_key');
        await sub.publish('ck1', proto.encode({ from: 'client' }));
        await sub.remove('ck1');
        await waitForCount(updates, 4, { what: 'two writes and two removals' });
        assert.deepEqual(updates.map(u => [u.key, !!u.removed]),
          [['live_key', false], ['live_key', true], ['ck1', false], ['ck1', true]]);
        assert.deepEqual(value(updates[0].data), { hello: 'world' });
        assert.deepEqual(value(updates[2].data), { from: 'client' });
      } finally {
        closeAll(client);
      }
    }));

    test(`a key whose TTL runs out is removed for every subscriber [${proto.name}]`, tracked(() => server, async () => {
      const { client } = await connected(proto);
      try {
        const channel = channelOf('shortttl', proto);
        const { sub } = await subscribeMap(client, channel);
        const updates = collect(sub, 'update');
        await mapPublish(channel, 'fleeting', { v: 1 });
        await waitForCount(updates, 2, { what: 'the write and its expiry', timeoutMs: 6000 });
        assert.deepEqual(updates.map(u => [u.key, !!u.removed]), [['fleeting', false], ['fleeting', true]]);
        const stats = await api(server, 'map_stats', { channel });
        assert.equal(stats.num_keys ?? 0, 0);
      } finally {
        closeAll(client);
      }
    }));

    test(`recovery after a reconnect and after a resubscribe; no sync on success [${proto.name}]`, tracked(() => server, async () => {
      const { client } = await connected(proto);
      try {
        const channel = channelOf('positioned', proto);
        await mapPublish(channel, 'p1', { x: 1 });
        const { sub, subscribed } = await subscribeMap(client, channel);
        assert.equal(subscribed.recoverable, true);
        let syncs = 0;
        sub.on('sync', () => { syncs++; });
        const updates = collect(sub, 'update');
        const gone = waitForEvent(client, 'disconnected');
        client.disconnect();
        await gone;
        await mapPublish(channel, 'during_disconnect', { v: 2 });
        await mapRemove(channel, 'p1');
        const back = waitForEvent(sub, 'subscribed');
        client.connect();
        const ctx = await back;
        assert.equal(ctx.recovered, true, JSON.stringify(ctx));
        await waitForCount(updates, 2, { what: 'the missed write and removal' });
        assert.deepEqual(updates.map(u => [u.key, !!u.removed]), [['during_disconnect', false], ['p1', true]]);

        sub.unsubscribe();
        await mapPublish(channel, 'missed_1', { v: 3 });
        await mapPublish(channel, 'missed_2', { v: 4 });
        const again = waitForEvent(sub, 'subscribed');
        sub.subscribe();
        assert.equal((await again).recovered, true);
        await waitForCount(updates, 4, { what: 'the writes missed while unsubscribed' });
        await delay(100);
        assert.equal(syncs, 0, 'a recovered subscription keeps its snapshot: no sync');
      } finally {
        closeAll(client);
      }
    }));

    test(`an unrecoverable position re-syncs from scratch, or unsubscribes with 112 [${proto.name}]`, tracked(() => server, async () => {
      const { client } = await connected(proto);
      try {
        for (const strategy of ['from_scratch', 'fatal']) {
          const channel = channelOf('smallstream', proto);
          const { sub } = await subscribeMap(client, channel, { unrecoverableStrategy: strategy });
          const first = waitForEvent(sub, 'update');
          await mapPublish(channel, 'initial', { v: 0 });
          await first;
          sub.unsubscribe();
          for (let i = 1; i <= 5; i++) await mapPublish(channel, `overflow_${i}`, { v: i });
          if (strategy === 'fatal') {
            const unsubscribed = waitForEvent(sub, 'unsubscribed');
            sub.subscribe();
            assert.equal((await unsubscribed).code, 112);
            continue;
          }
          const resubscribed = waitForEvent(sub, 'subscribed', { timeoutMs: 10000 });
          const synced = waitForEvent(sub, 'sync', { timeoutMs: 10000 });
          sub.subscribe();
          assert.equal((await resubscribed).recovered, false);
          const keys = (await synced).entries.map(e => e.key).sort();
          assert.deepEqual(keys, ['initial', 'overflow_1', 'overflow_2', 'overflow_3', 'overflow_4', 'overflow_5']);
        }
      } finally {
        closeAll(client);
      }
    }));

    test(`an expired key is recovered as a removal in recoverable mode [${proto.name}]`, tracked(() => server, async () => {
      const { client } = await connected(proto);
      try {
        const channel = channelOf('recov', proto);
        const { sub } = await subscribeMap(client, channel);
        const updates = collect(sub, 'update');
        await mapPublish(channel, 'short', { v: 1 });
        await waitForCount(updates, 1, { what: 'the write' });
        const gone = waitForEvent(client, 'disconnected');
        client.disconnect();
        await gone;
        await delay(3500);
        const back = waitForEvent(sub, 'subscribed');
        client.connect();
        assert.equal((await back).recovered, true);
        await waitForCount(updates, 2, { what: 'the expiry, recovered' });
        assert.deepEqual([updates[1].key, updates[1].removed], ['short', true]);
      } finally {
        closeAll(client);
      }
    }));

    test(`two clients share state; client_key keys by connection id [${proto.name}]`, tracked(() => server, async () => {
      const a = await connected(proto);
      const b = await connected(proto);
      try {
        const channel = channelOf('streamless', proto);
        const { sub: subA } = await subscribeMap(a.client, channel);
        const aUpdates = collect(subA, 'update');
        await subA.publish('shared_1', proto.encode({ from: 'A' }));
        await subA.publish('shared_2', proto.encode({ from: 'A' }));
        await waitForCount(aUpdates, 2, { what: "A's writes" });
        const { sub: subB, synced } = await subscribeMap(b.client, channel);
        assert.deepEqual(synced.entries.map(e => e.key).sort(), ['shared_1', 'shared_2']);
        const bUpdate = waitForEvent(subB, 'update');
        await subA.publish('shared_3', proto.encode({ from: 'A' }));
        assert.equal((await bUpdate).key, 'shared_3');

        const keyed = channelOf('clientkey', proto);
        const { sub } = await subscribeMap(a.client, keyed);
        const update = waitForEvent(sub, 'update');
        await sub.publish('arbitrary_key', proto.encode({ test: true }));
        assert.equal((await update).key, a.clientId, 'the key is the connection id');
      } finally {
        closeAll(a.client, b.client);
      }
    }));

    test(`map_clients presence lists subscribers and removes them on unsubscribe [${proto.name}]`, tracked(() => server, async () => {
      const a = await connected(proto);
      const b = await connected(proto);
      try {
        const channel = channelOf('prestest', proto);
        const presence = await subscribeMap(a.client, `prescli:${channel}`, {}, 'newMapClientsSubscription');
        assert.deepEqual(presence.synced.entries, []);
        const changes = collect(presence.sub, 'update');
        const { sub: mainA } = await subscribeMap(a.client, channel);
        await waitForCount(changes, 1, { what: "A's presence" });
        const { sub: mainB } = await subscribeMap(b.client, channel);
        await waitForCount(changes, 2, { what: "B's presence" });
        mainB.unsubscribe();
        await waitForCount(changes, 3, { what: "B's removal" });
        mainA.unsubscribe();
        await waitForCount(changes, 4, { what: "A's removal" });
        assert.deepEqual(changes.map(c => [c.key, !!c.removed]),
          [[a.clientId, false], [b.clientId, false], [b.clientId, true], [a.clientId, true]]);
        assert.equal(changes[0].info.client, a.clientId);
        const later = await connected(proto);
        const final = await subscribeMap(later.client, `prescli:${channel}`, {}, 'newMapClientsSubscription');
        assert.deepEqual(final.synced.entries, []);
      } finally {
        closeAll(a.client, b.client);
      }
    }));

    test(`tags filters select keys and a new filter re-syncs [${proto.name}]`, tracked(() => server, async () => {
      const { client } = await connected(proto);
      try {
        const channel = channelOf('tagged', proto);
        await mapPublish(channel, 'eng_item', { v: 1 }, { tags: { team: 'eng' } });
        await mapPublish(channel, 'sales_item', { v: 2 }, { tags: { team: 'sales' } });
        await mapPublish(channel, 'eng_item_2', { v: 3 }, { tags: { team: 'eng' } });
        const { sub, synced } = await subscribeMap(client, channel, { tagsFilter: { key: 'team', cmp: 'eq', val: 'eng' } });
        assert.deepEqual(synced.entries.map(e => e.key).sort(), ['eng_item', 'eng_item_2']);
        sub.unsubscribe();
        sub.setTagsFilter({ key: 'team', cmp: 'eq', val: 'sales' });
        const resynced = waitForEvent(sub, 'sync');
        sub.subscribe();
        assert.deepEqual((await resynced).entries.map(e => e.key), ['sales_item']);
      } finally {
        closeAll(client);
      }
    }));

    test(`delta updates to one key decode exactly: 1 whole + 2 deltas [${proto.name}]`, tracked(() => server, async () => {
      const { client } = await connected(proto);
      try {
        const channel = channelOf('mapdelta', proto);
        const { sub } = await subscribeMap(client, channel, { delta: 'fossil' });
        const updates = collect(sub, 'update');
        const padding = 'x'.repeat(500);
        for (const score of [100, 200, 300]) await mapPublish(channel, 'player1', { score, name: 'Alice', padding });
        await waitForCount(updates, 3, { what: 'three updates' });
        assert.deepEqual(updates.map(u => value(u.data).score), [100, 200, 300]);
        updates.forEach(u => assert.equal(value(u.data).padding, padding));
        const stats = sub.deltaStats();
        assert.equal(stats.numFullPayloads, 1, JSON.stringify(stats));
        assert.equal(stats.numDeltaPayloads, 2, JSON.stringify(stats));
        assert.ok(stats.bytesReceived < stats.bytesDecoded);
      } finally {
        closeAll(client);
      }
    }));
  }

  test('map API: read state in pages, read the stream, stats, clear; errors', tracked(() => server, async () => {
    const channel = `positioned:${uid('api-')}`;
    for (let i = 0; i < 5; i++) await mapPublish(channel, `k${i}`, { i }, { tags: { n: String(i) } });
    const first = await mapPublish(channel, 'k0', { i: 10 });
    assert.equal(first.offset, 6);
    const suppressed = await mapPublish(channel, 'k0', { i: 11 }, { key_mode: 'if_new' });
    assert.deepEqual([suppressed.suppressed, suppressed.suppress_reason], [true, 'key_exists']);
    const page1 = await api(server, 'map_read_state', { channel, limit: 3 });
    assert.deepEqual(page1.entries.map(e => e.key), ['k0', 'k1', 'k2']);
    assert.equal(page1.cursor, 'k2');
    const page2 = await api(server, 'map_read_state', { channel, limit: 3, cursor: page1.cursor });
    assert.deepEqual(page2.entries.map(e => e.key), ['k3', 'k4']);
    assert.equal(page2.cursor ?? '', '');
    assert.deepEqual(page1.entries[0].data, { i: 10 });
    const stream = await api(server, 'map_read_stream', { channel, limit: -1 });
    assert.deepEqual(stream.entries.map(e => e.offset), [1, 2, 3, 4, 5, 6]);
    const removed = await mapRemove(channel, 'k4');
    assert.equal(removed.offset, 7);
    const missing = await mapRemove(channel, 'k4');
    assert.equal(missing.suppress_reason, 'key_not_found');
    assert.equal((await api(server, 'map_stats', { channel })).num_keys, 4);
    await api(server, 'map_clear', { channel });
    assert.equal((await api(server, 'map_stats', { channel })).num_keys ?? 0, 0);
    await assert.rejects(api(server, 'map_publish', { channel: 'news:plain', key: 'k', data: {} }), e => e.code === 107);
    await assert.rejects(api(server, 'publish', { channel, data: {} }), e => e.code === 107);
    await assert.rejects(api(server, 'map_publish', { channel, key: '', data: {} }), e => e.code === 107);
    await assert.rejects(api(server, 'map_read_stream', { channel, since_offset: 1, since_epoch: 'nope', limit: 10 }), e => e.code === 112);
  }));
});

describe('map channels on PostgreSQL shared by two nodes and a backend', () => {
  let pg;
  let nodes = [];
  const failing = () => nodes.find(n => n.failed) || nodes[0];
  before(async () => {
    pg = await Postgres.start();
    const config = { channel: { namespaces: [...NAMESPACES, ...MAP_NAMESPACES] }, ...postgresMapBroker(pg) };
    const first = await startServer(config);
    nodes = [first, await startServer(config, { secret: first.secret, apiKey: first.apiKey })];
  });
  after(async () => {
    for (const node of nodes) await node.stop();
    if (pg) await pg.stop();
  });

  for (const proto of PROTOCOLS) {
    test(`a subscriber on node B follows writes made on node A and in a backend transaction [${proto.name}]`, tracked(failing, async () => {
      const [a, b] = nodes;
      const channel = `positioned:${uid('pg-')}-${proto.name}`;
      await api(a, 'map_publish', { channel, key: 'seed', data: { v: 0 } });
      const client = newClient(b, proto, { token: connToken(b, uid('map-user-')) });
      await connectClient(client);
      try {
        const sub = client.newMapSubscription(channel);
        const updates = collect(sub, 'update');
        const synced = waitForEvent(sub, 'sync');
        sub.subscribe();
        assert.deepEqual((await synced).entries.map(e => [e.key, proto.decode(e.data)]), [['seed', { v: 0 }]]);
        await api(a, 'map_publish', { channel, key: 'fromA', data: { v: 1 } });
        // The backend changes its own table and the map in one transaction.
        pg.sql(`CREATE TABLE IF NOT EXISTS orders (id TEXT); BEGIN; INSERT INTO orders VALUES ('o1');
          SELECT channel_offset FROM cf_map_publish('${channel}', 'fromSql', '{"v": 2}'::jsonb); COMMIT;`);
        await api(a, 'map_remove', { channel, key: 'seed' });
        await waitForCount(updates, 3, { what: 'changes from node A and from SQL' });
        assert.deepEqual(updates.map(u => [u.key, u.removed ? null : proto.decode(u.data)]),
          [['fromA', { v: 1 }], ['fromSql', { v: 2 }], ['seed', null]]);
        const state = await api(b, 'map_read_state', { channel, limit: -1 });
        assert.deepEqual(state.entries.map(e => e.key), ['fromA', 'fromSql']);
      } finally {
        closeAll(client);
      }
    }));
  }
});

async function waitFor(predicate, what, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (predicate()) return;
    await delay(20);
  }
  throw new Error(`timed out: ${what}`);
}
