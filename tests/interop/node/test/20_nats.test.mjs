// Two nodes on a NATS broker (R17): publications cross nodes, a NATS restart is survived
// (publishes fail fast while it is away, subscriptions come back by themselves), and what
// NATS cannot do (history) is refused clearly.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  PROTOCOLS, startServer, tracked, newClient, connectClient, subscribeAndWait, connToken, api,
  waitFor, waitForCount, collect, closeAll, uid, delay,
} from '../harness.mjs';
import { Nats } from '../infra.mjs';
import { healthStatus } from '../faults.mjs';

describe('two nodes on a NATS broker', () => {
  let nats;
  let nodes = [];
  const failing = () => nodes.find(n => n.failed) || nodes[0];

  before(async () => {
    nats = await Nats.start();
    const config = { broker: { enabled: true, type: 'nats', nats: { url: nats.url, prefix: uid('n') } } };
    const a = await startServer(config);
    const b = await startServer(config, { secret: a.secret, apiKey: a.apiKey });
    nodes = [a, b];
  });
  after(async () => {
    for (const node of nodes) await node.stop();
    if (nats) await nats.stop();
  });

  for (const proto of PROTOCOLS) {
    test(`a subscriber on node A receives what node B publishes [${proto.name}]`, tracked(failing, async () => {
      const [a, b] = nodes;
      const client = newClient(a, proto, { token: connToken(a, uid('u-')) });
      await connectClient(client);
      const channel = `news:${uid('n-')}`;
      const sub = client.newSubscription(channel);
      const pubs = collect(sub, 'publication');
      await subscribeAndWait(sub);
      for (let i = 1; i <= 3; i++) await api(b, 'publish', { channel, data: { i } });
      await waitForCount(pubs, 3, { what: 'publications through NATS' });
      assert.deepEqual(pubs.map(p => proto.decode(p.data)), [{ i: 1 }, { i: 2 }, { i: 3 }]);
      closeAll(client);
    }));
  }

  test('history is not available on a NATS broker (108), and wildcards are refused (107)', tracked(failing, async () => {
    const [a] = nodes;
    await assert.rejects(api(a, 'publish', { channel: `chat:${uid('h-')}`, data: {} }), e => e.code === 108);
    await assert.rejects(api(a, 'publish', { channel: 'news:a.*', data: {} }), e => e.code === 107);
  }));

  test('a NATS restart is survived: publishes fail fast, then flow again within 5 s', tracked(failing, async () => {
    const [a, b] = nodes;
    const proto = PROTOCOLS[0];
    const client = newClient(a, proto, { token: connToken(a, uid('u-')) });
    await connectClient(client);
    const channel = `news:${uid('restart-')}`;
    const sub = client.newSubscription(channel);
    const pubs = collect(sub, 'publication');
    await subscribeAndWait(sub);
    await api(b, 'publish', { channel, data: { phase: 'before' } });
    await waitForCount(pubs, 1, { what: 'a publication before the restart' });

    await nats.kill();
    // Once B knows NATS is gone (its /health says so), publishes fail fast. Before that, one may
    // still go into the closing socket, as with any at-most-once broker (seen on a loaded box).
    await waitFor(async () => (await healthStatus(b)) === 500, { timeoutMs: 3000, intervalMs: 50, what: 'B noticing NATS is gone' });
    const started = Date.now();
    await assert.rejects(api(b, 'publish', { channel, data: { phase: 'during' } }), e => e.code === 100);
    assert.ok(Date.now() - started < 1500, 'failed fast');
    await delay(1000);
    const restartedAt = Date.now();
    await nats.restart();
    // Publishing resumes once B reconnected; delivery once A restored its subscription.
    let sent = 0;
    await waitFor(async () => {
      try {
        await api(b, 'publish', { channel, data: { phase: 'after', n: ++sent } });
      } catch {
        return false;
      }
      return pubs.some(p => p.data.phase === 'after');
    }, { timeoutMs: 5000, intervalMs: 100, what: 'delivery after the NATS restart' });
    console.log(`# NATS restart: delivery resumed ${Date.now() - restartedAt} ms after the server came back`);
    assert.ok(!pubs.some(p => p.data.phase === 'during'), 'a failed publish is not delivered later');
    closeAll(client);
  }));
});
