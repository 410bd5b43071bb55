// The Redis connection itself: a PUB/SUB connection that goes silent while staying open is
// found by the probe and rebuilt (R8), the delivery canary turns health red meanwhile, and
// Redis authentication (`password`) works, with a
// clear failure when it is wrong.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  PROTOCOLS, startServer, tracked, newClient, connectClient, subscribeAndWait, connToken, api,
  waitFor, waitForCount, collect, closeAll, uid,
} from '../harness.mjs';
import { Redis, SilencingProxy } from '../infra.mjs';
import { healthStatus, subscribeMany, startPublisher, assertSubscribersCaughtUp } from '../faults.mjs';

const PROBE_INTERVAL_MS = 3000;

describe('a silent PUB/SUB connection (R8)', () => {
  let redis;
  let proxy;
  let nodes = [];
  const failing = () => nodes.find(n => n.failed) || nodes[0];

  before(async () => {
    redis = await Redis.start();
    proxy = await SilencingProxy.start(redis.port);
    const prefix = uid('r8');
    const section = address => ({ engine: { type: 'redis', redis: { address: [address], prefix, io_timeout: '1s' } } });
    const a = await startServer(section(redis.address));
    // Node B reaches Redis through the proxy; its command connection keeps working.
    const b = await startServer(section(proxy.address), { secret: a.secret, apiKey: a.apiKey });
    nodes = [a, b];
  });
  after(async () => {
    for (const node of nodes) await node.stop();
    if (proxy) await proxy.stop();
    if (redis) await redis.stop();
  });

  test('the probe notices within two intervals, the connection is rebuilt, no silent gap', tracked(failing, async () => {
    const [a, b] = nodes;
    const channel = `rec:${uid('silent-')}`;
    const subscribers = await subscribeMany(b, channel, 4);
    const publisher = startPublisher(a, channel);
    await waitFor(() => publisher.results.filter(r => r.ok).length >= 30, { what: 'publishing under way' });
    assert.ok(proxy.silencePubSub() >= 1, 'node B has a PUB/SUB connection through the proxy');
    const silencedAt = Date.now();
    // The rebuild follows at once (the health flip lasts milliseconds), so the log says when.
    await waitFor(() => b.log.includes('probe timed out'), { timeoutMs: 2 * PROBE_INTERVAL_MS + 2000, intervalMs: 50, what: 'B to notice the silence' });
    const detectedMs = Date.now() - silencedAt;
    await waitFor(() => b.log.includes('redis PUB/SUB reconnected'), { timeoutMs: 5000, intervalMs: 50, what: 'B to rebuild its PUB/SUB connection' });
    assert.equal(await healthStatus(b), 200);
    const rebuiltMs = Date.now() - silencedAt;
    await waitFor(() => publisher.results.filter(r => r.ok && r.at > silencedAt + rebuiltMs).length >= 40, { timeoutMs: 10000, what: 'publishing after the rebuild' });
    await publisher.stop();
    assert.deepEqual(publisher.results.filter(r => !r.ok), [], 'publishing through A never failed');
    const owed = await assertSubscribersCaughtUp(subscribers, publisher.results);
    assert.ok(owed > 0, 'live delivery resumed');
    console.log(`# R8: silence noticed after ${detectedMs} ms (probe every ${PROBE_INTERVAL_MS} ms), PUB/SUB rebuilt after ${rebuiltMs} ms, ${owed} owed deliveries all made`);
    closeAll(...subscribers.map(s => s.client));
  }));
});

// Centrifugo #1189: a PUB/SUB connection that stays open but delivers nothing left `/health`
// green. With `health.canary` the node publishes to itself through Redis and `/health` turns
// red within `timeout` (plus a tick) of the last delivery, then green once deliveries resume.
describe('the delivery canary on a silent PUB/SUB connection (#1189)', () => {
  const CANARY = { enabled: true, interval: '200ms', timeout: '1s' };
  const RED_WITHIN_MS = 1000 + 200 + 500; // timeout + one interval + scheduling slack
  let redis;
  let proxy;
  let nodes = [];
  const failing = () => nodes.find(n => n.failed) || nodes[0];

  before(async () => {
    redis = await Redis.start();
    proxy = await SilencingProxy.start(redis.port);
    const config = {
      engine: { type: 'redis', redis: { address: [proxy.address], prefix: uid('canary'), io_timeout: '1s' } },
      health: { canary: CANARY },
      prometheus: { enabled: true },
    };
    nodes = [await startServer(config)];
  });
  after(async () => {
    for (const node of nodes) await node.stop();
    if (proxy) await proxy.stop();
    if (redis) await redis.stop();
  });

  const metric = async (node, name) => {
    const res = await fetch(`http://127.0.0.1:${node.apiPort}/metrics`, { signal: AbortSignal.timeout(2000) });
    const line = (await res.text()).split('\n').find(l => l.startsWith(`${name} `));
    return line === undefined ? undefined : Number(line.split(' ')[1]);
  };

  test('health turns red within timeout + interval of the silence, and green after the rebuild', tracked(failing, async () => {
    const [node] = nodes;
    await waitFor(async () => (await metric(node, 'spinwire_health_canary_round_trip_seconds_count')) >= 3,
      { what: 'canary round trips before the fault' });
    assert.equal(await metric(node, 'spinwire_health_canary_healthy'), 1);
    assert.equal(await healthStatus(node), 200);

    assert.ok(proxy.silencePubSub() >= 1, 'the node has a PUB/SUB connection through the proxy');
    const silencedAt = Date.now();
    await waitFor(async () => (await healthStatus(node)) === 500,
      { timeoutMs: RED_WITHIN_MS + 2000, intervalMs: 25, what: '/health to turn red' });
    const redMs = Date.now() - silencedAt;
    const res = await fetch(node.healthUrl);
    assert.match(JSON.stringify(await res.json()), /delivery canary/);
    assert.equal(await metric(node, 'spinwire_health_canary_healthy'), 0);
    assert.ok(redMs <= RED_WITHIN_MS, `red after ${redMs} ms, bound ${RED_WITHIN_MS} ms`);
    // The connection is never told apart from a healthy one by Redis or TCP; only the
    // broker's probe (every 3 s) rebuilds it, after which round trips resume.
    await waitFor(async () => (await healthStatus(node)) === 200,
      { timeoutMs: 15000, intervalMs: 50, what: '/health to turn green again' });
    const greenMs = Date.now() - silencedAt;
    assert.ok(node.log.includes('redis PUB/SUB reconnected'), 'the broker rebuilt its PUB/SUB connection');
    assert.equal(await metric(node, 'spinwire_health_canary_healthy'), 1);
    await waitFor(async () => (await metric(node, 'spinwire_health_canary_failures_total')) >= 1,
      { what: 'the red turn counted' });
    assert.match(node.log, /delivery canary: no round trip through the broker, unhealthy/);
    console.log(`# canary: /health red ${redMs} ms after the PUB/SUB went silent (bound ${RED_WITHIN_MS} ms), green again after ${greenMs} ms`);
  }));
});

describe('Redis with a password', () => {
  let redis;
  let nodes = [];
  const failing = () => nodes.find(n => n.failed) || nodes[0];

  before(async () => {
    redis = await Redis.start(['--requirepass', 'redis-secret']);
    const config = { engine: { type: 'redis', redis: { address: [redis.address], password: 'redis-secret', prefix: uid('pw') } } };
    const a = await startServer(config);
    const b = await startServer(config, { secret: a.secret, apiKey: a.apiKey });
    nodes = [a, b];
  });
  after(async () => {
    for (const node of nodes) await node.stop();
    if (redis) await redis.stop();
  });

  test('nodes with the password exchange publications; a node with a wrong one stays unhealthy (500)', tracked(failing, async () => {
    const [a, b] = nodes;
    const proto = PROTOCOLS[0];
    const client = newClient(a, proto, { token: connToken(a, uid('u-')) });
    await connectClient(client);
    const channel = `chat:${uid('pw-')}`;
    const sub = client.newSubscription(channel);
    const pubs = collect(sub, 'publication');
    await subscribeAndWait(sub);
    await api(b, 'publish', { channel, data: { ok: 1 } });
    await waitForCount(pubs, 1, { what: 'a publication through the authenticated Redis' });
    closeAll(client);

    // startServer waits for a healthy node, so start this one by hand and look at it.
    const wrong = { engine: { type: 'redis', redis: { address: [redis.address], password: 'wrong', prefix: uid('pw'), io_timeout: '1s' } } };
    await assert.rejects(startServer(wrong, { secret: a.secret, apiKey: a.apiKey, readyTimeoutMs: 4000 }),
      /did not become ready: no 200 .* health answered HTTP 500/s);
  }));
});
