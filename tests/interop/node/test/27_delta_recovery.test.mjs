// Delta compression (fossil) with npm centrifuge's `delta: 'fossil'` subscriptions, publication
// versions, and recovery from a position without an epoch (the SDK's getState).
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  PROTOCOLS, NAMESPACES, startServer, tracked, newClient, connectClient, subscribeAndWait,
  connToken, api, waitForEvent, waitForCount, collect, closeAll, uid, delay,
} from '../harness.mjs';

const DELTA_NS = {
  name: 'delta',
  allow_subscribe_for_client: true,
  allowed_delta_types: ['fossil'],
  delta_publish: true,
  history_size: 100,
  history_ttl: '300s',
  force_recovery: true,
};

const VERSIONED_NS = {
  name: 'versioned',
  allow_subscribe_for_client: true,
  history_size: 10,
  history_ttl: '300s',
  force_positioning: true,
};

/** A JSON document of about 4 KB; each revision changes about 1 % of it. */
function documentAt(revision) {
  const rows = [];
  for (let i = 0; i < 60; i++) {
    rows.push({ id: i, name: `instrument ${i}`, bid: 100 + i, ask: 101 + i, venue: 'XNAS' });
  }
  rows[revision % rows.length].bid = 1000 + revision;
  return { revision, rows };
}

describe('delta compression, versions and epoch-less recovery', () => {
  let server;
  before(async () => { server = await startServer({ channel: { namespaces: [...NAMESPACES, DELTA_NS, VERSIONED_NS] } }); });
  after(async () => { if (server) await server.stop(); });

  for (const proto of PROTOCOLS) {
    test(`a fossil subscriber decodes every revision exactly and most arrive as deltas [${proto.name}]`, tracked(() => server, async () => {
      const client = newClient(server, proto, { token: connToken(server, uid('delta-')) });
      try {
        await connectClient(client);
        const channel = `delta:${uid('doc-')}-${proto.name}`;
        const sub = client.newSubscription(channel, { delta: 'fossil' });
        const pubs = collect(sub, 'publication');
        await subscribeAndWait(sub);
        const revisions = 20;
        for (let revision = 0; revision < revisions; revision++) {
          // delta_publish on the namespace: plain API publishes go out as deltas.
          await api(server, 'publish', { channel, data: documentAt(revision) });
        }
        await waitForCount(pubs, revisions, { what: 'every revision' });
        pubs.forEach((p, revision) => assert.deepEqual(proto.decode(p.data), documentAt(revision), `revision ${revision}`));
        const stats = sub.deltaStats();
        assert.equal(stats.numPublications, revisions, JSON.stringify(stats));
        assert.equal(stats.numFullPayloads, 1, `only the first is whole: ${JSON.stringify(stats)}`);
        assert.equal(stats.numDeltaPayloads, revisions - 1, JSON.stringify(stats));
        assert.ok(stats.compressionRatio > 0.9, `deltas are much smaller: ${JSON.stringify(stats)}`);
      } finally {
        closeAll(client);
      }
    }));

    test(`a fossil subscriber recovers missed revisions as a delta chain [${proto.name}]`, tracked(() => server, async () => {
      const client = newClient(server, proto, { token: connToken(server, uid('delta-rec-')) });
      try {
        await connectClient(client);
        const channel = `delta:${uid('doc-')}-${proto.name}`;
        const sub = client.newSubscription(channel, { delta: 'fossil' });
        const pubs = collect(sub, 'publication');
        await subscribeAndWait(sub);
        await api(server, 'publish', { channel, data: documentAt(0) });
        await waitForCount(pubs, 1, { what: 'the first revision' });
        const gone = waitForEvent(client, 'disconnected');
        client.disconnect();
        await gone;
        for (let revision = 1; revision <= 5; revision++) {
          await api(server, 'publish', { channel, data: documentAt(revision) });
        }
        const back = waitForEvent(sub, 'subscribed');
        client.connect();
        const ctx = await back;
        assert.equal(ctx.recovered, true, JSON.stringify(ctx));
        await api(server, 'publish', { channel, data: documentAt(6) });
        await waitForCount(pubs, 7, { what: 'recovered and live revisions' });
        pubs.forEach((p, revision) => assert.deepEqual(proto.decode(p.data), documentAt(revision), `revision ${revision}`));
        const stats = sub.deltaStats();
        assert.ok(stats.numDeltaPayloads >= 5, `recovered and live revisions are deltas: ${JSON.stringify(stats)}`);
      } finally {
        closeAll(client);
      }
    }));

    test(`getState with an empty epoch recovers what history still has [${proto.name}]`, tracked(() => server, async () => {
      const channel = `delta:${uid('state-')}-${proto.name}`;
      for (let revision = 1; revision <= 5; revision++) {
        await api(server, 'publish', { channel, data: { revision } });
      }
      const client = newClient(server, proto, { token: connToken(server, uid('state-')) });
      try {
        await connectClient(client);
        let calls = 0;
        // The app loaded revision 2 from its own store and knows only the offset.
        const sub = client.newSubscription(channel, {
          getState: async () => { calls++; return { offset: 2, epoch: '' }; },
        });
        const pubs = collect(sub, 'publication');
        const ctx = await subscribeAndWait(sub);
        assert.equal(ctx.recovered, true, JSON.stringify(ctx));
        await waitForCount(pubs, 3, { what: 'the publications after offset 2' });
        assert.deepEqual(pubs.map(p => proto.decode(p.data).revision), [3, 4, 5]);
        await delay(300);
        assert.equal(calls, 1, 'getState is called once: no resubscribe loop');
        assert.equal(sub.state, 'subscribed');
      } finally {
        closeAll(client);
      }
    }));

    test(`stale versions are dropped and subscribers see only newer ones [${proto.name}]`, tracked(() => server, async () => {
      const client = newClient(server, proto, { token: connToken(server, uid('ver-')) });
      try {
        await connectClient(client);
        const channel = `versioned:${uid('v-')}-${proto.name}`;
        const sub = client.newSubscription(channel);
        const pubs = collect(sub, 'publication');
        await subscribeAndWait(sub);
        const first = await api(server, 'publish', { channel, data: { v: 5 }, version: 5 });
        const stale = await api(server, 'publish', { channel, data: { v: 4 }, version: 4 });
        assert.deepEqual(stale, first, 'a stale publish answers the current position');
        await api(server, 'publish', { channel, data: { v: 6 }, version: 6, version_epoch: '' });
        await api(server, 'publish', { channel, data: { v: 1 }, version: 1, version_epoch: 'restarted' });
        await waitForCount(pubs, 3, { what: 'accepted versions' });
        assert.deepEqual(pubs.map(p => proto.decode(p.data).v), [5, 6, 1]);
        const history = await api(server, 'history', { channel, limit: -1 });
        assert.equal(history.publications.length, 3);
      } finally {
        closeAll(client);
      }
    }));
  }
});
