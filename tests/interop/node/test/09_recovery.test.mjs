// Scenario 9: stream recovery (namespace `rec`: history_size 100, history_ttl 300s,
// force_recovery; client.recovery_max_publication_limit = 10).
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  PROTOCOLS, startServer, tracked, newClient, connectClient, subscribeAndWait,
  connToken, api, waitForEvent, waitForCount, collect, closeAll, uid,
} from '../harness.mjs';

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
