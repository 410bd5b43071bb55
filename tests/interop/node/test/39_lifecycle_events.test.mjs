// Lifecycle events (issue 18, a Spinwire extension): connects, subscribes, unsubscribes and
// disconnects of npm `centrifuge` clients reach a test backend over HTTP and over gRPC, with
// the codes the clients themselves saw, in order and at least once through a backend that
// refuses deliveries for a while; a graceful shutdown delivers the 3001 disconnects; a full
// queue drops events and says so, without slowing the clients; a node killed with SIGKILL is
// reported by the surviving node (node_lost).
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  PROTOCOLS, startServer, tracked, newClient, connectClient, subscribeAndWait, connToken,
  api, waitFor, waitForEvent, closeAll, uid, delay,
} from '../harness.mjs';
import { startBackend, grpcSkipReason } from '../proxy.mjs';
import { metricValue } from '../faults.mjs';

/** Every event the backend acknowledged or was offered, once per (node, seq), in seq order. */
async function events(backend) {
  const seen = new Map();
  for (const call of await backend.calls('lifecycle')) {
    for (const e of call.body.events || []) {
      const event = { ...e, seq: Number(e.seq), node: call.body.node };
      seen.set(`${event.node}/${event.seq}`, event);
    }
  }
  return [...seen.values()].sort((a, b) => a.seq - b.seq);
}

const kindOf = e => ['connected', 'disconnected', 'subscribed', 'unsubscribed', 'node_lost'].find(k => k in e);

async function eventsOf(backend, client, count, what) {
  let mine = [];
  await waitFor(async () => {
    mine = (await events(backend)).filter(e => e.client === client);
    return mine.length >= count;
  }, { timeoutMs: 10000, intervalMs: 50, what: `${count} lifecycle events of ${what}` });
  return mine;
}

function lifecycleConfig(backend, extra = {}) {
  return {
    prometheus: { enabled: true },
    proxies: [{ name: 'events', endpoint: backend.endpoint('lifecycle'), timeout: '500ms' }],
    lifecycle_events: { enabled: true, proxy_name: 'events', batch_delay: '50ms', ...extra },
  };
}

for (const kind of ['http', 'grpc']) {
  describe(`lifecycle events to a ${kind} backend`, { skip: kind === 'grpc' ? grpcSkipReason() : false }, () => {
    let backend, server;
    before(async () => {
      backend = await startBackend(kind);
      server = await startServer(lifecycleConfig(backend));
    });
    after(async () => {
      if (server) await server.stop();
      if (backend) await backend.stop();
    });

    test('connect, subscribe, unsubscribe (client and server) and disconnect, with the codes clients saw', tracked(() => server, async () => {
      const user = uid('alice-');
      const proto = PROTOCOLS[0];
      const client = newClient(server, proto, { token: connToken(server, user) });
      const connected = await connectClient(client);
      const mine = `news:${uid('mine-')}`;
      const kicked = `news:${uid('kicked-')}`;
      const own = client.newSubscription(mine);
      const other = client.newSubscription(kicked);
      await subscribeAndWait(own);
      await subscribeAndWait(other);
      own.unsubscribe();
      const serverUnsubscribe = waitForEvent(other, 'unsubscribed');
      await api(server, 'unsubscribe', { user, channel: kicked });
      const unsubscribedCtx = await serverUnsubscribe;
      const disconnectedCtx = waitForEvent(client, 'disconnected');
      await api(server, 'disconnect', { user, disconnect: { code: 4501, reason: 'kicked by test' } });
      const gone = await disconnectedCtx;

      const seen = await eventsOf(backend, connected.client, 6, 'the client');
      assert.deepEqual(seen.map(kindOf), ['connected', 'subscribed', 'subscribed', 'unsubscribed', 'unsubscribed', 'disconnected']);
      assert.ok(seen.every(e => e.user === user && Number(e.time) > Date.now() - 60000));
      assert.equal(seen[0].connected.transport, 'websocket');
      assert.equal(seen[0].connected.protocol, 'json');
      assert.deepEqual(seen.slice(1, 3).map(e => e.subscribed.channel), [mine, kicked]);
      assert.equal(seen[3].unsubscribed.channel, mine);
      assert.equal(seen[3].unsubscribed.code ?? 0, 0, 'the client unsubscribed itself');
      assert.equal(seen[4].unsubscribed.channel, kicked);
      assert.equal(seen[4].unsubscribed.code, unsubscribedCtx.code, 'the code the client saw');
      assert.equal(seen[5].disconnected.code, gone.code);
      assert.equal(seen[5].disconnected.code, 4501);
      assert.equal(seen[5].disconnected.reason, 'kicked by test');
      closeAll(client);
    }));

    test('a client that goes away is disconnected with 3000; Protobuf clients are reported too', tracked(() => server, async () => {
      const proto = PROTOCOLS[1];
      const client = newClient(server, proto, { token: connToken(server, uid('bob-')) });
      const connected = await connectClient(client);
      client.disconnect();
      const seen = await eventsOf(backend, connected.client, 2, 'the client');
      assert.deepEqual(seen.map(kindOf), ['connected', 'disconnected']);
      assert.equal(seen[0].connected.protocol, 'protobuf');
      assert.equal(seen[1].disconnected.code, 3000);
    }));

    test('batches the backend refuses are delivered again, in order, once it is back', tracked(() => server, async () => {
      const figure = name => metricValue(server, `spinwire_lifecycle_${name}`);
      const [failedBefore, sentBefore] = [await figure('deliveries_failed_total'), await figure('events_sent_total')];
      await fetch(`${backend.callsUrl}/lifecycle_fail?n=3`, { method: 'POST' });
      const clients = [];
      for (let i = 0; i < 5; i++) {
        const client = newClient(server, PROTOCOLS[0], { token: connToken(server, uid('carol-')) });
        clients.push({ client, ctx: await connectClient(client) });
      }
      for (const { client } of clients) client.disconnect();
      // The backend sees a refused batch too: wait for the acknowledgement, not the offer.
      await waitFor(async () => (await figure('events_sent_total')) - sentBefore >= 10, {
        timeoutMs: 10000, intervalMs: 50, what: 'the 10 events acknowledged',
      });
      assert.ok((await figure('deliveries_failed_total')) - failedBefore >= 3, 'each refusal counted');
      for (const { ctx } of clients) {
        const seen = await eventsOf(backend, ctx.client, 2, `client ${ctx.client}`);
        assert.deepEqual(seen.map(kindOf), ['connected', 'disconnected']);
      }
      const seqs = (await events(backend)).map(e => e.seq);
      assert.deepEqual(seqs, Array.from({ length: seqs.length }, (_, i) => i + 1), 'no gap, no duplicate');
      assert.equal(await figure('events_dropped_total'), 0);
    }));
  });
}

describe('lifecycle events on shutdown and when the queue is full', () => {
  let backend;
  before(async () => { backend = await startBackend('http'); });
  after(async () => { if (backend) await backend.stop(); });

  test('a graceful shutdown delivers the clients\' 3001 disconnects', tracked(() => null, async () => {
    const server = await startServer(lifecycleConfig(backend));
    const client = newClient(server, PROTOCOLS[0], { token: connToken(server, uid('dave-')) });
    const ctx = await connectClient(client);
    await eventsOf(backend, ctx.client, 1, 'the connect');
    // SIGTERM with the client still connected (the harness's stop() would close it first).
    server.signal('SIGTERM');
    await waitFor(() => server.exited !== null, { timeoutMs: 10000, what: 'the server to exit' });
    const seen = await eventsOf(backend, ctx.client, 2, 'the shutdown');
    await server.stop();
    assert.equal(seen[1].disconnected.code, 3001, JSON.stringify(seen));
    closeAll(client);
  }));

  test('a full queue drops events, counts them, and the next batch says how many', tracked(() => null, async () => {
    const server = await startServer(lifecycleConfig(backend, { queue_size: 4, batch_size: 2 }));
    try {
      await fetch(`${backend.callsUrl}/lifecycle_fail?n=1000000`, { method: 'POST' });
      const clients = [];
      const started = Date.now();
      for (let i = 0; i < 10; i++) {
        const client = newClient(server, PROTOCOLS[0], { token: connToken(server, uid('erin-')) });
        await connectClient(client);
        clients.push(client);
      }
      assert.ok(Date.now() - started < 5000, 'connects are not held up by a backend that refuses everything');
      await waitFor(async () => (await metricValue(server, 'spinwire_lifecycle_events_dropped_total')) > 0, {
        timeoutMs: 5000, what: 'dropped events counted',
      });
      await fetch(`${backend.callsUrl}/lifecycle_fail?n=0`, { method: 'POST' });
      // Once the queue is empty, every drop has been reported by some batch (a refused batch
      // is offered again unchanged, so each counts once).
      await waitFor(async () => (await metricValue(server, 'spinwire_lifecycle_events_queued')) === 0, {
        timeoutMs: 10000, what: 'the queue to drain',
      });
      const dropped = await metricValue(server, 'spinwire_lifecycle_events_dropped_total');
      const batches = new Map();
      for (const { body } of await backend.calls('lifecycle')) {
        if (body.node === undefined) continue;
        batches.set(JSON.stringify([body.node, (body.events || []).map(e => Number(e.seq)), body.dropped]), body);
      }
      const reported = [...batches.values()].reduce((sum, b) => sum + Number(b.dropped || 0), 0);
      assert.ok(dropped > 0);
      assert.equal(reported, dropped, 'the batches say how many were dropped');
      closeAll(...clients);
    } finally {
      await server.stop();
    }
  }));
});

describe('lifecycle events when a node is killed (two nodes on Redis)', () => {
  let backend, redis, nodes = [];
  before(async () => {
    const { Redis } = await import('../infra.mjs');
    backend = await startBackend('http');
    redis = await Redis.start();
    const config = {
      ...lifecycleConfig(backend),
      engine: { type: 'redis', redis: { address: redis.address, prefix: uid('lc') } },
    };
    const a = await startServer(config);
    const b = await startServer(config, { secret: a.secret, apiKey: a.apiKey });
    nodes = [a, b];
  });
  after(async () => {
    for (const node of nodes) await node.stop();
    if (redis) await redis.stop();
    if (backend) await backend.stop();
  });

  test('a node killed with SIGKILL is reported as node_lost by the survivor', tracked(() => nodes[1], async () => {
    const [a] = nodes;
    const client = newClient(a, PROTOCOLS[0], { token: connToken(a, uid('frank-')), maxReconnectDelay: 60000, minReconnectDelay: 60000 });
    const ctx = await connectClient(client);
    const [connected] = await eventsOf(backend, ctx.client, 1, 'the connect on node A');
    const killedAt = Date.now();
    a.signal('SIGKILL');
    let lost;
    await waitFor(async () => {
      lost = (await events(backend)).find(e => e.node_lost && e.node_lost.node === connected.node);
      return lost !== undefined;
    }, { timeoutMs: 25000, intervalMs: 200, what: 'node_lost for node A' });
    assert.notEqual(lost.node, connected.node, 'reported by the survivor');
    const seconds = (Date.now() - killedAt) / 1000;
    assert.ok(seconds < 20, `reported within the node expiry and one announcement (${seconds} s)`);
    console.log(`# node_lost reported ${seconds.toFixed(1)} s after the SIGKILL`);
    closeAll(client);
  }));
});
