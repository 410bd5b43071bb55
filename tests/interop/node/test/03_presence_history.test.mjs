// Scenario 3: presence / presence_stats with two clients; history after 3 API publications.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  PROTOCOLS, startServer, tracked, newClient, connectClient, subscribeAndWait,
  connToken, api, closeAll, uid, waitFor, collect, waitForCount,
} from '../harness.mjs';

describe('presence and history', () => {
  let server;
  before(async () => { server = await startServer(); });
  after(async () => { if (server) await server.stop(); });

  for (const proto of PROTOCOLS) {
    test(`presence and presence_stats list both subscribers [${proto.name}]`, tracked(() => server, async () => {
      const userA = uid('pa-');
      const userB = uid('pb-');
      const a = newClient(server, proto, { token: connToken(server, userA) });
      const b = newClient(server, proto, { token: connToken(server, userB) });
      try {
        const ca = await connectClient(a);
        const cb = await connectClient(b);
        const channel = `chat:${uid('presence-')}-${proto.name}`;
        const subA = a.newSubscription(channel);
        const subB = b.newSubscription(channel);
        await subscribeAndWait(subA);
        await subscribeAndWait(subB);

        // Presence is updated on subscribe; poll briefly in case the server applies it
        // asynchronously after the subscribe reply.
        let presence;
        await waitFor(async () => {
          presence = await subA.presence();
          return Object.keys(presence.clients).length === 2;
        }, { timeoutMs: 3000, what: 'presence with 2 clients' });
        const ids = Object.keys(presence.clients).sort();
        assert.deepEqual(ids, [ca.client, cb.client].sort());
        assert.equal(presence.clients[ca.client].client, ca.client);
        assert.equal(presence.clients[ca.client].user, userA);
        assert.equal(presence.clients[cb.client].client, cb.client);
        assert.equal(presence.clients[cb.client].user, userB);

        const stats = await subB.presenceStats();
        assert.deepEqual(stats, { numClients: 2, numUsers: 2 });

        // The server API sees the same.
        const apiStats = await api(server, 'presence_stats', { channel });
        assert.equal(apiStats.num_clients, 2);
        assert.equal(apiStats.num_users, 2);

        // One unsubscribes: presence shrinks.
        subB.unsubscribe();
        await waitFor(async () => {
          const s = await subA.presenceStats();
          return s.numClients === 1 && s.numUsers === 1;
        }, { timeoutMs: 3000, what: 'presence_stats 1/1 after unsubscribe' });
      } finally {
        closeAll(a, b);
      }
    }));

    test(`history returns 3 API publications in order with offsets [${proto.name}]`, tracked(() => server, async () => {
      const c = newClient(server, proto, { token: connToken(server, uid('h-')) });
      try {
        await connectClient(c);
        const channel = `chat:${uid('history-')}-${proto.name}`;
        const sub = c.newSubscription(channel);
        await subscribeAndWait(sub);
        const live = collect(sub, 'publication');

        const payloads = [{ n: 1, s: 'one' }, { n: 2, s: 'two' }, { n: 3, s: 'three' }];
        let epoch = null;
        for (let i = 0; i < payloads.length; i++) {
          const r = await api(server, 'publish', { channel, data: payloads[i] });
          assert.equal(r.offset, i + 1, 'publish result offset');
          assert.equal(typeof r.epoch, 'string');
          assert.ok(r.epoch.length > 0, 'publish result epoch');
          if (epoch === null) epoch = r.epoch;
          assert.equal(r.epoch, epoch, 'epoch is stable');
        }
        // Live delivery carries the offsets too.
        const got = await waitForCount(live, 3, { what: 'live publications' });
        assert.deepEqual(got.map(p => p.offset), [1, 2, 3]);
        assert.deepEqual(got.map(p => proto.decode(p.data)), payloads);

        for (const limit of [10, -1]) {
          const h = await sub.history({ limit });
          assert.equal(h.publications.length, 3, `history limit ${limit}`);
          assert.deepEqual(h.publications.map(p => p.offset), [1, 2, 3]);
          assert.deepEqual(h.publications.map(p => proto.decode(p.data)), payloads);
          assert.equal(h.offset, 3);
          assert.equal(h.epoch, epoch);
        }

        // limit 0: position only.
        const pos = await sub.history({ limit: 0 });
        assert.equal(pos.publications.length, 0);
        assert.equal(pos.offset, 3);
        assert.equal(pos.epoch, epoch);

        // since: publications after offset 1.
        const since = await sub.history({ limit: 10, since: { offset: 1, epoch } });
        assert.deepEqual(since.publications.map(p => p.offset), [2, 3]);

        // reverse: newest first.
        const rev = await sub.history({ limit: 2, reverse: true });
        assert.deepEqual(rev.publications.map(p => p.offset), [3, 2]);
      } finally {
        closeAll(c);
      }
    }));
  }
});
