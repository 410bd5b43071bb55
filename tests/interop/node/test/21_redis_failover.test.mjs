// Redis failovers under a steady publish load: a Redis Cluster master killed (R9) and a
// Sentinel-managed master killed (R10). Publishing resumes on the promoted replica, delivery
// resumes on every node, and no subscriber has a silent gap.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  PROTOCOLS, startServer, tracked, newClient, connectClient, subscribeAndWait, connToken, api,
  waitFor, waitForCount, collect, closeAll, uid,
} from '../harness.mjs';
import { RedisCluster, RedisSentinel, redisCli } from '../infra.mjs';
import { subscribeMany, startPublisher, assertSubscribersCaughtUp, liveSinceLastSubscribe } from '../faults.mjs';

const IO_TIMEOUT_MS = 1000;

async function twoNodes(redisSection) {
  const config = {
    engine: { type: 'redis', redis: { prefix: uid('fo'), io_timeout: `${IO_TIMEOUT_MS}ms`, ...redisSection } },
    client: { channel_position_check_delay: '2s' },
  };
  const a = await startServer(config);
  const b = await startServer(config, { secret: a.secret, apiKey: a.apiKey });
  return [a, b];
}

/** Kills `victim()` during publishing from A to subscribers on B; returns timings. */
async function failoverUnderLoad(nodes, kill, resumeWithinMs) {
  const [a, b] = nodes;
  const channel = `rec:${uid('fo-')}`;
  const subscribers = await subscribeMany(b, channel, 6);
  const publisher = startPublisher(a, channel);
  const { results } = publisher;
  await waitFor(() => results.filter(r => r.ok).length >= 30, { what: 'publishing under way' });
  const killedAt = Date.now();
  await kill(channel);
  await waitFor(() => results.some(r => r.at > killedAt && r.ok && results.some(f => !f.ok && f.at > killedAt && f.at < r.at)),
    { timeoutMs: resumeWithinMs, intervalMs: 50, what: `publishing to fail and resume within ${resumeWithinMs} ms` });
  const resumedAt = results.find(r => r.ok && r.at > killedAt && results.some(f => !f.ok && f.at > killedAt && f.at < r.at)).at;
  // A node's PUB/SUB connection follows the new master on its own reconnect schedule (backoff
  // up to 1 s), which can trail the publisher's recovery: keep publishing until every
  // subscriber on B gets publications live again, not only through a final resubscribe.
  await waitFor(() => results.filter(r => r.ok && r.at > resumedAt).length >= 60
    && subscribers.every(s => liveSinceLastSubscribe(s) >= 5),
  { timeoutMs: 15000, intervalMs: 50, what: 'live delivery to every subscriber after the failover' });
  await publisher.stop();

  const failed = results.filter(r => !r.ok);
  for (const r of failed) {
    assert.equal(r.code, 100, `failed publish ${r.n}: ${JSON.stringify(r)}`);
    assert.ok(r.ms <= IO_TIMEOUT_MS + 700, `failed publish ${r.n} took ${r.ms} ms`);
  }
  const afterResume = results.filter(r => r.at > resumedAt + 1000);
  assert.deepEqual(afterResume.filter(r => !r.ok).map(r => r.code), [], 'no errors (READONLY or other) once resumed');
  // Live delivery came back: the wait above saw every subscriber get publications after its
  // last (re)subscribe while the publisher ran. (Counting owed deliveries only after the stop
  // is not proof either way: a late epoch check may resubscribe everyone once publishing ended,
  // which the gap check below still covers.)
  const owed = await assertSubscribersCaughtUp(subscribers, results);
  closeAll(...subscribers.map(s => s.client));

  // Both directions work afterwards: B publishes, a subscriber on A receives.
  const proto = PROTOCOLS[1];
  const client = newClient(a, proto, { token: connToken(a, uid('after-')) });
  await connectClient(client);
  const other = `news:${uid('after-')}`;
  const sub = client.newSubscription(other);
  const pubs = collect(sub, 'publication');
  await subscribeAndWait(sub);
  await api(b, 'publish', { channel: other, data: { ok: true } });
  await waitForCount(pubs, 1, { what: 'B → A after the failover' });
  closeAll(client);
  return { failed: failed.length, resumeMs: resumedAt - killedAt, acknowledged: results.filter(r => r.ok).length, owed };
}

describe('Redis Cluster master killed during publishing (R9)', () => {
  let cluster;
  let nodes = [];
  const failing = () => nodes.find(n => n.failed) || nodes[0];

  before(async () => {
    cluster = await RedisCluster.start({ masters: 3, replicas: 1 });
    nodes = await twoNodes({ cluster_address: cluster.addresses });
  });
  after(async () => {
    for (const node of nodes) await node.stop();
    if (cluster) await cluster.stop();
  });

  test('publishing resumes after the replica takes over; no silent gap', tracked(failing, async () => {
    const outcome = await failoverUnderLoad(nodes, async channel => {
      const slot = Number(redisCli(cluster.nodes[0].port, 'cluster', 'keyslot', channel));
      await cluster.masterOf(slot).kill();
    }, 15000);
    assert.ok(outcome.failed > 0, 'the failover was seen by publishers');
    console.log(`# R9: ${outcome.failed} publishes failed fast, publishing resumed ${outcome.resumeMs} ms after kill -9 of the master, ` +
      `${outcome.acknowledged} acknowledged, ${outcome.owed} owed deliveries all made`);
  }));
});

describe('Sentinel master killed during publishing (R10)', () => {
  let sentinel;
  let nodes = [];
  const failing = () => nodes.find(n => n.failed) || nodes[0];

  before(async () => {
    sentinel = await RedisSentinel.start();
    nodes = await twoNodes({ sentinel_address: sentinel.sentinelAddresses, sentinel_master_name: 'mymaster' });
  });
  after(async () => {
    for (const node of nodes) await node.stop();
    if (sentinel) await sentinel.stop();
  });

  test('both nodes follow the new master; publishing and delivery resume; no silent gap', tracked(failing, async () => {
    const before = sentinel.currentMasterPort();
    const outcome = await failoverUnderLoad(nodes, () => sentinel.master.kill(), 15000);
    assert.notEqual(sentinel.currentMasterPort(), before, 'sentinels promoted a replica');
    console.log(`# R10: ${outcome.failed} publishes failed fast, publishing resumed ${outcome.resumeMs} ms after kill -9 of the master, ` +
      `${outcome.acknowledged} acknowledged, ${outcome.owed} owed deliveries all made`);
  }));
});
