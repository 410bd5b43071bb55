// Several Spinwire nodes on one Redis act as one server (issue 5): npm `centrifuge` clients on
// one node receive what another node's API publishes, presence and history are shared,
// a client that moves between nodes recovers exactly what it missed, the server API's
// connection commands reach every node, and `info`/`channels` see the whole cluster.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  PROTOCOLS, startServer, tracked, newClient, connectClient, subscribeAndWait, connToken, api,
  waitForEvent, waitForCount, waitFor, collect, closeAll, uid,
} from '../harness.mjs';
import { Redis, Balancer } from '../infra.mjs';
import { newEmulationClient, closeEmulationClients } from '../http_transports.mjs';

/** Config for a node on `redis` (every node of a test shares the prefix). */
export function redisNode(redis, prefix, extra = {}) {
  return {
    engine: { type: 'redis', redis: { address: [redis.address], prefix, io_timeout: '1s' } },
    ...extra,
  };
}

/** Starts `count` nodes sharing secrets, on `config`. */
export async function startNodes(count, config) {
  const first = await startServer(config);
  const nodes = [first];
  for (let i = 1; i < count; i++) {
    nodes.push(await startServer(config, { secret: first.secret, apiKey: first.apiKey }));
  }
  return nodes;
}

describe('three nodes on one Redis', () => {
  let redis;
  let nodes = [];
  const failing = () => nodes.find(n => n.failed) || nodes[0];

  before(async () => {
    redis = await Redis.start();
    nodes = await startNodes(3, redisNode(redis, uid('it'), { http_stream: { enabled: true } }));
  });
  after(async () => {
    closeEmulationClients();
    for (const node of nodes) await node.stop();
    if (redis) await redis.stop();
  });

  for (const proto of PROTOCOLS) {
    test(`a subscriber on node A receives what nodes B and C publish [${proto.name}]`, tracked(failing, async () => {
      const [a, b, c] = nodes;
      const client = newClient(a, proto, { token: connToken(a, uid('u-')) });
      await connectClient(client);
      const channel = `news:${uid('x-')}`;
      const sub = client.newSubscription(channel);
      const pubs = collect(sub, 'publication');
      await subscribeAndWait(sub);
      await api(b, 'publish', { channel, data: { from: 'b' } });
      await api(c, 'publish', { channel, data: { from: 'c' } });
      await waitForCount(pubs, 2, { what: 'cross-node publications' });
      assert.deepEqual(pubs.map(p => proto.decode(p.data)), [{ from: 'b' }, { from: 'c' }]);
      closeAll(client);
    }));
  }

  test('presence on node A lists a client of node B; history reads the same on every node', tracked(failing, async () => {
    const [a, b, c] = nodes;
    const proto = PROTOCOLS[0];
    const channel = `chat:${uid('room-')}`;
    const onB = newClient(b, proto, { token: connToken(b, 'user-on-b') });
    const onA = newClient(a, proto, { token: connToken(a, 'user-on-a') });
    const ctxB = await connectClient(onB);
    await connectClient(onA);
    const subB = onB.newSubscription(channel);
    const subA = onA.newSubscription(channel);
    await subscribeAndWait(subB);
    await subscribeAndWait(subA);

    const presence = await api(a, 'presence', { channel });
    assert.equal(presence.presence[ctxB.client].user, 'user-on-b', 'A sees B\'s client');
    const fromClient = await subA.presence();
    assert.ok(fromClient.clients[ctxB.client], 'the SDK presence call on A lists B\'s client');
    const stats = await api(c, 'presence_stats', { channel });
    assert.deepEqual(stats, { num_clients: 2, num_users: 2 });

    for (let i = 1; i <= 3; i++) await api([a, b, c][i - 1], 'publish', { channel, data: { i } });
    const histories = await Promise.all(nodes.map(n => api(n, 'history', { channel, limit: -1 })));
    assert.equal(histories[0].publications.length, 3);
    assert.deepEqual(histories[0].publications.map(p => p.data), [{ i: 1 }, { i: 2 }, { i: 3 }]);
    for (const h of histories.slice(1)) assert.deepEqual(h, histories[0], 'same history on every node');
    const viaSdk = await subA.history({ limit: -1 });
    assert.deepEqual(viaSdk.publications.map(p => p.offset), [1, 2, 3]);
    closeAll(onA, onB);
  }));

  for (const proto of PROTOCOLS) {
    test(`a client that moves from node A to node B recovers exactly what it missed [${proto.name}]`, tracked(failing, async () => {
      const [a, b, c] = nodes;
      const lb = await Balancer.start([a.port, b.port]);
      try {
        lb.only(0);
        const client = newClient({ wsUrl: lb.wsUrl }, proto, { token: connToken(a, uid('mover-')) });
        await connectClient(client);
        const channel = `rec:${uid('move-')}`;
        const sub = client.newSubscription(channel);
        const pubs = collect(sub, 'publication');
        await subscribeAndWait(sub);
        for (let i = 1; i <= 3; i++) await api(c, 'publish', { channel, data: { i } });
        await waitForCount(pubs, 3, { what: 'live publications on A' });

        // Node A "goes away" behind the balancer; the next connection lands on B.
        lb.hold();
        lb.only(1);
        const clientsOnB = (await api(b, 'info')).nodes.find(n => n.name.endsWith(`_${b.port}`)).num_clients;
        lb.dropAll();
        for (let i = 4; i <= 8; i++) await api(c, 'publish', { channel, data: { i } });
        const resubscribed = waitForEvent(sub, 'subscribed', { timeoutMs: 10000 });
        lb.release();
        const ctx = await resubscribed;
        assert.equal(ctx.wasRecovering, true);
        assert.equal(ctx.recovered, true, 'recovered on the other node');
        await waitForCount(pubs, 8, { what: 'recovered publications' });
        assert.deepEqual(pubs.map(p => p.offset), [1, 2, 3, 4, 5, 6, 7, 8], 'each exactly once, in order');
        assert.deepEqual(pubs.slice(3).map(p => proto.decode(p.data)), [4, 5, 6, 7, 8].map(i => ({ i })));
        const now = (await api(b, 'info')).nodes.find(n => n.name.endsWith(`_${b.port}`)).num_clients;
        assert.equal(now, clientsOnB + 1, 'the client is on node B now');
        closeAll(client);
      } finally {
        await lb.stop();
      }
    }));
  }

  for (const proto of PROTOCOLS) {
    test(`HTTP-streaming: /emulation requests that land on another node reach the session [${proto.name}]`, tracked(failing, async () => {
      const [a, b] = nodes;
      const lb = await Balancer.start([a.port, b.port]);
      try {
        // The stream is opened on node A; every later connection (the SDK's /emulation
        // POSTs) goes to node B, which must forward the commands to A.
        lb.only(0);
        const client = newEmulationClient({ port: lb.port }, proto, 'http_stream', { token: connToken(a, uid('emu-')) });
        await connectClient(client);
        lb.only(1);
        const channel = `chat:${uid('emu-')}`;
        const sub = client.newSubscription(channel);
        const pubs = collect(sub, 'publication');
        await subscribeAndWait(sub);
        await sub.publish(proto.encode({ from: 'client' }));
        await api(b, 'publish', { channel, data: { from: 'api' } });
        await waitForCount(pubs, 2, { what: 'publications over the stream on A' });
        assert.deepEqual(pubs.map(p => proto.decode(p.data)), [{ from: 'client' }, { from: 'api' }]);
        assert.deepEqual(lb.connections.map(n => n > 0), [true, true], 'the stream went to A, emulation requests to B');
        const presence = await api(b, 'presence', { channel });
        assert.equal(Object.keys(presence.presence).length, 1, 'the session is subscribed');
        closeAll(client);
      } finally {
        await lb.stop();
      }
    }));
  }

  test('info lists every node; channels adds up subscribers across nodes', tracked(failing, async () => {
    const [a, b, c] = nodes;
    const proto = PROTOCOLS[0];
    // A node learns of the others from their announcements; a newcomer is answered at once.
    for (const node of nodes) {
      await waitFor(async () => (await api(node, 'info')).nodes.length === 3, { timeoutMs: 5000, what: `three nodes in info at ${node.port}` });
    }
    const info = await api(c, 'info');
    const ports = info.nodes.map(n => Number(n.name.split('_').pop())).sort();
    assert.deepEqual(ports, [a, b, c].map(n => n.port).sort(), 'one entry per node, named by its port');
    assert.equal(new Set(info.nodes.map(n => n.uid)).size, 3);

    const channel = `news:${uid('count-')}`;
    const clients = [];
    for (const node of [b, c, c]) {
      const client = newClient(node, proto, { token: connToken(node, uid('counted-')) });
      await connectClient(client);
      await subscribeAndWait(client.newSubscription(channel));
      clients.push(client);
    }
    const result = await api(a, 'channels', { pattern: 'news:count-*' });
    assert.deepEqual(result.channels[channel], { num_clients: 3 }, JSON.stringify(result));
    closeAll(...clients);
  }));

  test('disconnect, unsubscribe and subscribe through one node act on a user connected to another', tracked(failing, async () => {
    const [a, b, c] = nodes;
    const proto = PROTOCOLS[0];
    const user = uid('target-');
    const client = newClient(b, proto, { token: connToken(b, user) });
    await connectClient(client);
    const channel = `news:${uid('ctl-')}`;
    const sub = client.newSubscription(channel);
    await subscribeAndWait(sub);

    const unsubscribed = waitForEvent(sub, 'unsubscribed', { timeoutMs: 5000 });
    await api(c, 'unsubscribe', { user, channel });
    const unsub = await unsubscribed;
    assert.equal(unsub.code, 2000, 'server unsubscribe');

    const serverSide = `news:${uid('server-side-')}`;
    const joined = waitForEvent(client, 'subscribed', { timeoutMs: 5000, filter: ctx => ctx.channel === serverSide });
    await api(a, 'subscribe', { user, channel: serverSide });
    await joined;

    // 4500-4999: the SDK does not reconnect, so it ends 'disconnected' with the code.
    const gone = waitForEvent(client, 'disconnected', { timeoutMs: 5000 });
    await api(a, 'disconnect', { user, disconnect: { code: 4501, reason: 'bye from A' } });
    const ctx = await gone;
    assert.equal(ctx.code, 4501);
    assert.equal(ctx.reason, 'bye from A');
    closeAll(client);
  }));
});

describe('node kill -9 (R11 at CI scale)', () => {
  let redis;
  let nodes = [];
  const failing = () => nodes.find(n => n.failed) || nodes[0];

  before(async () => {
    redis = await Redis.start();
    nodes = await startNodes(3, redisNode(redis, uid('kill')));
  });
  after(async () => {
    for (const node of nodes) await node.stop();
    if (redis) await redis.stop();
  });

  test('clients of a killed node reconnect to the others and recover every publication', tracked(failing, async () => {
    const [a, b, c] = nodes;
    const lb = await Balancer.start([a.port, b.port, c.port]);
    const channel = `rec:${uid('survive-')}`;
    const clients = [];
    try {
      for (let i = 0; i < 30; i++) {
        const proto = PROTOCOLS[i % 2];
        const client = newClient({ wsUrl: lb.wsUrl }, proto, { token: connToken(a, uid('r11-')) });
        await connectClient(client);
        const sub = client.newSubscription(channel);
        const state = { proto, pubs: collect(sub, 'publication'), subscribed: collect(sub, 'subscribed') };
        await subscribeAndWait(sub);
        clients.push({ client, sub, ...state });
      }
      // Counts in `info` are as of each node's last announcement (every 3 s).
      await waitFor(async () => {
        const perNode = (await api(a, 'info')).nodes.map(n => n.num_clients);
        return perNode.length === 3 && perNode.every(n => n === 10);
      }, { timeoutMs: 8000, intervalMs: 200, what: 'the balancer spreading 10 clients to each node' });

      let published = 0;
      let stop = false;
      const publisher = (async () => {
        while (!stop) {
          published += 1;
          const r = await api(a, 'publish', { channel, data: { n: published } });
          assert.equal(r.offset, published);
          await new Promise(r => setTimeout(r, 20));
        }
      })();
      await waitFor(() => published >= 20, { what: 'publishing under way' });
      b.signal('SIGKILL');
      await b.waitForExit(5000);
      const killedAt = Date.now();
      await waitFor(async () => {
        const info = await api(a, 'info');
        const live = info.nodes.filter(n => !n.name.endsWith(`_${b.port}`));
        return live.reduce((sum, n) => sum + n.num_clients, 0) === 30;
      }, { timeoutMs: 15000, intervalMs: 200, what: 'all 30 clients on the surviving nodes' });
      const reconnectMs = Date.now() - killedAt;
      await waitFor(() => published >= 80, { timeoutMs: 10000, what: 'more publications after the kill' });
      stop = true;
      await publisher;
      for (const [i, state] of clients.entries()) {
        await waitForCount(state.pubs, published, { timeoutMs: 10000, what: `publications at client ${i}` });
        assert.deepEqual(state.pubs.map(p => p.offset), Array.from({ length: published }, (_, k) => k + 1),
          `client ${i}: every publication exactly once, in order`);
        for (const ctx of state.subscribed.slice(1)) {
          assert.equal(ctx.recovered, true, `client ${i}: recovered after moving`);
        }
      }
      const moved = clients.filter(s => s.subscribed.length > 1).length;
      assert.ok(moved >= 10, `the killed node's clients resubscribed elsewhere (${moved})`);
      console.log(`# R11: ${moved} clients moved, all on live nodes ${reconnectMs} ms after kill -9, ${published} publications, 0 lost`);
    } finally {
      closeAll(...clients.map(s => s.client));
      await lb.stop();
    }
  }));
});
