// Scenario 9: stream recovery (namespace `rec`: history_size 100, history_ttl 300s,
// force_recovery; client.recovery_max_publication_limit = 10), subscribe flag 2 (reject
// unrecovered) over raw JSON, positioning gap -> unsubscribe 2500 -> SDK resubscribe
// (namespace `gap`), and cache recovery with auto_cache_recover (namespace `cache`).
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  PROTOCOLS, NAMESPACES, startServer, tracked, newClient, connectClient, subscribeAndWait,
  connToken, api, waitForEvent, waitForCount, collect, closeAll, uid, openRaw, waitFor,
  delay,
} from '../harness.mjs';

// Positioned + recoverable namespace whose stream meta expires after 2 s: a publish after
// that starts a new epoch at offset 1, which a positioned subscriber must notice.
const GAP_NS = {
  name: 'gap',
  history_size: 10,
  history_ttl: '2s',
  history_meta_ttl: '2s',
  force_positioning: true,
  force_recovery: true,
  allow_subscribe_for_client: true,
};

// Cache recovery: the latest publication is delivered on every subscribe.
const CACHE_NS = {
  name: 'cache',
  force_recovery: true,
  force_recovery_mode: 'cache',
  auto_cache_recover: true,
  history_size: 1,
  history_ttl: '300s',
  allow_subscribe_for_client: true,
};

async function publishN(server, channel, from, n) {
  const sent = [];
  for (let i = 0; i < n; i++) {
    const data = { seq: from + i };
    const r = await api(server, 'publish', { channel, data });
    assert.equal(r.offset, from + i, 'publish offset');
    sent.push(data);
  }
  return sent;
}

describe('recovery', () => {
  let server;
  before(async () => { server = await startServer(); });
  after(async () => { if (server) await server.stop(); });

  for (const proto of PROTOCOLS) {
    test(`missed publications are recovered in order; beyond the limit recovered=false [${proto.name}]`, tracked(() => server, async () => {
      const user = uid('rec-');
      const client = newClient(server, proto, { token: connToken(server, user) });
      try {
        await connectClient(client);
        const channel = `rec:${uid('room-')}-${proto.name}`;
        const sub = client.newSubscription(channel);
        const pubs = collect(sub, 'publication');

        const first = await subscribeAndWait(sub);
        assert.equal(first.recoverable, true, 'force_recovery makes the subscription recoverable');
        assert.equal(first.wasRecovering, false);
        assert.equal(first.recovered, false);

        // Live publications 1..3.
        await publishN(server, channel, 1, 3);
        await waitForCount(pubs, 3, { what: 'live publications' });
        assert.deepEqual(pubs.map(p => p.offset), [1, 2, 3]);

        // --- Drop the connection, miss 5 publications, come back.
        const gone = waitForEvent(client, 'disconnected', { timeoutMs: 5000 });
        client.disconnect();
        await gone;
        assert.equal(sub.state, 'subscribing', 'subscription waits to resubscribe');
        const missed = await publishN(server, channel, 4, 5);

        const resubscribed = waitForEvent(sub, 'subscribed', { timeoutMs: 5000 });
        client.connect();
        const ctx = await resubscribed;
        assert.equal(ctx.wasRecovering, true, `subscribed ctx: ${JSON.stringify(ctx)}`);
        assert.equal(ctx.recovered, true, `subscribed ctx: ${JSON.stringify(ctx)}`);
        assert.equal(ctx.hasRecoveredPublications, true);

        await waitForCount(pubs, 8, { what: 'recovered publications' });
        // One more live publication: it arrives after everything recovered, so the
        // list is complete once it is there (no duplicates, no gaps).
        await publishN(server, channel, 9, 1);
        await waitForCount(pubs, 9, { what: 'live publication after recovery' });
        assert.deepEqual(pubs.map(p => p.offset), [1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert.deepEqual(pubs.slice(3, 8).map(p => proto.decode(p.data)), missed);

        // --- Miss more than recovery_max_publication_limit (10): 12 publications.
        const gone2 = waitForEvent(client, 'disconnected', { timeoutMs: 5000 });
        client.disconnect();
        await gone2;
        await publishN(server, channel, 10, 12);

        const resubscribed2 = waitForEvent(sub, 'subscribed', { timeoutMs: 5000 });
        client.connect();
        const ctx2 = await resubscribed2;
        assert.equal(ctx2.wasRecovering, true, `subscribed ctx: ${JSON.stringify(ctx2)}`);
        assert.equal(ctx2.recovered, false, `subscribed ctx: ${JSON.stringify(ctx2)}`);
        assert.equal(ctx2.hasRecoveredPublications, false, 'no publications on failed recovery');
        assert.ok(ctx2.streamPosition, 'stream position present');
        assert.equal(ctx2.streamPosition.offset, 21, 'failed recovery reports the current top offset');

        await publishN(server, channel, 22, 1);
        await waitForCount(pubs, 10, { what: 'live publication after failed recovery' });
        assert.equal(pubs.length, 10);
        assert.equal(pubs[9].offset, 22);
      } finally {
        closeAll(client);
      }
    }));

    test(`server-initiated reconnect (API disconnect code 4000) recovers without gaps [${proto.name}]`, tracked(() => server, async () => {
      const user = uid('rec4000-');
      const client = newClient(server, proto, { token: connToken(server, user) });
      try {
        await connectClient(client);
        const channel = `rec:${uid('room-')}-${proto.name}`;
        const sub = client.newSubscription(channel);
        const pubs = collect(sub, 'publication');
        await subscribeAndWait(sub);
        await publishN(server, channel, 1, 2);
        await waitForCount(pubs, 2, { what: 'live publications' });

        const connecting = waitForEvent(client, 'connecting', { timeoutMs: 5000 });
        const resubscribed = waitForEvent(sub, 'subscribed', { timeoutMs: 8000 });
        await api(server, 'disconnect', { user, disconnect: { code: 4000, reason: 'test' } });
        const c = await connecting;
        assert.equal(c.code, 4000, `connecting ctx: ${JSON.stringify(c)}`);
        assert.equal(c.reason, 'test');
        // Published while the client is reconnecting (whether it is still away or
        // already back, it must see each exactly once).
        await publishN(server, channel, 3, 3);
        const ctx = await resubscribed;
        assert.equal(ctx.wasRecovering, true);
        assert.equal(ctx.recovered, true);

        await publishN(server, channel, 6, 1);
        await waitForCount(pubs, 6, { what: 'all publications' });
        assert.deepEqual(pubs.map(p => p.offset), [1, 2, 3, 4, 5, 6]);
        assert.deepEqual(pubs.map(p => proto.decode(p.data).seq), [1, 2, 3, 4, 5, 6]);
      } finally {
        closeAll(client);
      }
    }));
  }
});

describe('recovery: subscribe flag 2 (reject unrecovered) over raw JSON', () => {
  let server;
  before(async () => { server = await startServer(); });
  after(async () => { if (server) await server.stop(); });

  test('unrecoverable position with flag 2 -> error 112; without it -> was_recovering, not recovered', tracked(() => server, async () => {
    const conn = await openRaw(server);
    try {
      conn.ws.send(JSON.stringify({ id: 1, connect: { token: connToken(server, uid('flag2-')), name: 'raw-interop' } }));
      await waitFor(() => conn.messages.some(m => m.id === 1), { what: 'connect reply' });
      assert.ok(conn.messages.find(m => m.id === 1).connect);

      conn.ws.send('{"id":2,"subscribe":{"channel":"rec:x","recover":true,"offset":5,"epoch":"nonexistent","flag":2}}');
      await waitFor(() => conn.messages.some(m => m.id === 2), { what: 'reply to subscribe with flag 2' });
      const rejected = conn.messages.find(m => m.id === 2);
      assert.ok(rejected.error, `flag 2 subscribe must fail: ${JSON.stringify(rejected)}`);
      assert.equal(rejected.error.code, 112, JSON.stringify(rejected));
      assert.equal(rejected.error.message, 'unrecoverable position');
      assert.equal(rejected.subscribe, undefined);

      // The same request without flag 2 (same connection: the failed subscribe left
      // nothing behind) succeeds, reporting a failed recovery.
      conn.ws.send('{"id":3,"subscribe":{"channel":"rec:x","recover":true,"offset":5,"epoch":"nonexistent"}}');
      await waitFor(() => conn.messages.some(m => m.id === 3), { what: 'reply to subscribe without flag 2' });
      const accepted = conn.messages.find(m => m.id === 3);
      assert.equal(accepted.error, undefined, JSON.stringify(accepted));
      assert.ok(accepted.subscribe, JSON.stringify(accepted));
      assert.equal(accepted.subscribe.was_recovering, true, JSON.stringify(accepted));
      assert.equal(accepted.subscribe.recovered, undefined, `recovered must be absent (false): ${JSON.stringify(accepted)}`);
      assert.equal(accepted.subscribe.recoverable, true, JSON.stringify(accepted));
      assert.equal(accepted.subscribe.publications, undefined, 'no publications on a failed recovery');
    } finally {
      conn.ws.terminate();
    }
  }));
});

describe('recovery: positioning gap and cache recovery', { concurrency: true }, () => {
  let server;
  before(async () => {
    server = await startServer({ channel: { namespaces: [...NAMESPACES, GAP_NS, CACHE_NS] } });
  });
  after(async () => { if (server) await server.stop(); });

  for (const proto of PROTOCOLS) {
    test(`new epoch after meta expiry -> unsubscribe 2500 -> resubscribed, connection kept [${proto.name}]`, tracked(() => server, async () => {
      const client = newClient(server, proto, { token: connToken(server, uid('gap-')) });
      try {
        await connectClient(client);
        const channel = `gap:${uid('room-')}-${proto.name}`;
        const sub = client.newSubscription(channel);
        const pubs = collect(sub, 'publication');
        const first = await subscribeAndWait(sub);
        assert.equal(first.positioned, true, `subscribed ctx: ${JSON.stringify(first)}`);
        assert.equal(first.recoverable, true, `subscribed ctx: ${JSON.stringify(first)}`);

        const trouble = [];
        client.on('connecting', ctx => trouble.push(['connecting', ctx.code, ctx.reason]));
        client.on('disconnected', ctx => trouble.push(['disconnected', ctx.code, ctx.reason]));
        const subscribing = collect(sub, 'subscribing');
        sub.on('unsubscribed', ctx => trouble.push(['unsubscribed', ctx.code, ctx.reason]));

        const r1 = await api(server, 'publish', { channel, data: { n: 1 } });
        assert.equal(r1.offset, 1);
        await waitForCount(pubs, 1, { what: 'first publication' });

        // history_meta_ttl 2 s: after 3 s the next publish starts a new epoch at offset 1.
        await delay(3000);
        const resubscribed = waitForEvent(sub, 'subscribed', { timeoutMs: 5000 });
        const r2 = await api(server, 'publish', { channel, data: { n: 2 } });
        assert.equal(r2.offset, 1, `stream meta should have expired (history_meta_ttl 2s): ${JSON.stringify(r2)}`);
        assert.notEqual(r2.epoch, r1.epoch, 'a new epoch after meta expiry');

        const ctx = await resubscribed;
        assert.ok(subscribing.length >= 1, 'subscription went through subscribing');
        assert.equal(subscribing[0].code, 2500, `subscribing ctx: ${JSON.stringify(subscribing[0])}`);
        assert.equal(subscribing[0].reason, 'insufficient state');
        assert.equal(ctx.wasRecovering, true, `resubscribed ctx: ${JSON.stringify(ctx)}`);
        assert.equal(ctx.recovered, false, `epoch changed: recovery must fail: ${JSON.stringify(ctx)}`);
        assert.equal(sub.state, 'subscribed');

        // Still receiving on the same connection.
        const later = waitForEvent(sub, 'publication', { timeoutMs: 5000, filter: p => proto.decode(p.data).n === 3 });
        const r3 = await api(server, 'publish', { channel, data: { n: 3 } });
        assert.equal(r3.epoch, r2.epoch);
        const p3 = await later;
        assert.equal(p3.offset, r3.offset);
        assert.deepEqual(trouble, [], 'the connection stays connected, the subscription is never unsubscribed');
        assert.equal(client.state, 'connected');
      } finally {
        closeAll(client);
      }
    }));

    test(`auto cache recovery delivers the latest publication on a fresh subscribe [${proto.name}]`, tracked(() => server, async () => {
      const channel = `cache:${uid('latest-')}-${proto.name}`;
      const r = await api(server, 'publish', { channel, data: { latest: proto.name } });
      assert.equal(r.offset, 1);
      const client = newClient(server, proto, { token: connToken(server, uid('cache-')) });
      try {
        await connectClient(client);
        const sub = client.newSubscription(channel);
        const pubs = collect(sub, 'publication');
        const ctx = await subscribeAndWait(sub);
        assert.equal(ctx.recoverable, true, `subscribed ctx: ${JSON.stringify(ctx)}`);
        await waitForCount(pubs, 1, { timeoutMs: 2000, what: 'latest publication from the cache' });
        assert.deepEqual(proto.decode(pubs[0].data), { latest: proto.name });
        assert.equal(pubs[0].offset, 1);
        // Exactly one (history_size 1): nothing else arrives.
        await delay(200);
        assert.equal(pubs.length, 1);
      } finally {
        closeAll(client);
      }
    }));
  }
});
