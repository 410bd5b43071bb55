// Redis failures under a steady publish load (reliability scenarios R5, R6 and R7): publishes
// fail fast with error 100 while Redis is away, /health says so, publishing and delivery resume
// by themselves, and no subscriber ever has a silent gap: each one either receives every
// publication or is told (`recovered: false` on a new epoch) that it could not. With AOF
// (`appendfsync always`, R6) a restart keeps the epoch and every subscriber recovers.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { startServer, tracked, waitFor, closeAll, uid, delay } from '../harness.mjs';
import { Redis } from '../infra.mjs';
import { healthStatus, subscribeMany, startPublisher, assertSubscribersCaughtUp } from '../faults.mjs';

const IO_TIMEOUT_MS = 1000;

const TITLES = {
  restart: 'Redis killed and restarted empty during publishing (R5)',
  aof: 'Redis with AOF (appendfsync always) killed and restarted during publishing (R6)',
  freeze: 'Redis frozen (SIGSTOP) for 3 s during publishing (R7)',
};

for (const fault of ['restart', 'aof', 'freeze']) {
  const title = TITLES[fault];
  const kills = fault !== 'freeze';
  describe(title, () => {
    let redis;
    let nodes = [];
    const failing = () => nodes.find(n => n.failed) || nodes[0];

    before(async () => {
      redis = await Redis.start(fault === 'aof' ? ['--appendonly', 'yes', '--appendfsync', 'always'] : []);
      const config = {
        engine: { type: 'redis', redis: { address: [redis.address], prefix: uid('f'), io_timeout: `${IO_TIMEOUT_MS}ms` } },
        // With AOF nothing is lost, but B misses what A publishes while B's PUB/SUB reconnects
        // (about a second at 100/s): recovery must be allowed to fetch that many (the harness
        // default is 10).
        client: { channel_position_check_delay: '2s', ...(fault === 'aof' ? { recovery_max_publication_limit: 1000 } : {}) },
      };
      const a = await startServer(config);
      const b = await startServer(config, { secret: a.secret, apiKey: a.apiKey });
      nodes = [a, b];
    });
    after(async () => {
      if (fault === 'freeze') redis.proc.signal('SIGCONT');
      for (const node of nodes) await node.stop();
      if (redis) await redis.stop();
    });

    test('publishes fail fast, health reports it, publishing and delivery resume, no silent gap', tracked(failing, async () => {
      const [a, b] = nodes;
      const channel = `rec:${uid('fault-')}`;
      const subscribers = await subscribeMany(b, channel, 6);
      const publisher = startPublisher(a, channel);
      const { results } = publisher;
      await waitFor(() => results.filter(r => r.ok).length >= 30, { what: 'publishing under way' });

      const faultAt = Date.now();
      if (kills) await redis.kill(); else redis.proc.signal('SIGSTOP');
      await waitFor(async () => (await healthStatus(a)) === 500, { timeoutMs: 6000, intervalMs: 100, what: '/health 500 during the outage' });
      await waitFor(() => results.some(r => r.at > faultAt && !r.ok), { timeoutMs: 5000, what: 'a failed publish' });
      await delay(Math.max(0, faultAt + 3000 - Date.now()));
      const backAt = Date.now();
      if (kills) await redis.restart(); else redis.proc.signal('SIGCONT');
      await waitFor(() => results.some(r => r.ok && r.at > backAt), { timeoutMs: 5000, intervalMs: 50, what: 'publishing to resume within 5 s' });
      const resumedAt = results.find(r => r.ok && r.at > backAt).at;
      await waitFor(async () => (await healthStatus(a)) === 200 && (await healthStatus(b)) === 200, { timeoutMs: 5000, what: 'healthy again' });
      await waitFor(() => results.filter(r => r.ok && r.at > resumedAt).length >= 60, { timeoutMs: 10000, what: 'publishing after recovery' });
      await publisher.stop();

      const failed = results.filter(r => !r.ok);
      assert.ok(failed.length > 0, 'the outage was seen by publishers');
      for (const r of failed) {
        assert.equal(r.code, 100, `failed publish ${r.n}: ${JSON.stringify(r)}`);
        assert.ok(r.ms <= IO_TIMEOUT_MS + 700, `failed publish ${r.n} took ${r.ms} ms (io_timeout ${IO_TIMEOUT_MS} ms)`);
      }
      const acknowledged = results.filter(r => r.ok);
      const lastEpoch = acknowledged[acknowledged.length - 1].epoch;
      if (fault === 'restart') {
        assert.notEqual(lastEpoch, acknowledged[0].epoch, 'Redis without persistence: a new epoch');
      } else {
        assert.equal(lastEpoch, acknowledged[0].epoch, `${fault} loses nothing: same epoch`);
      }
      // Let the subscribers catch up (the SDK resubscribes after 2500 with a backoff).
      const delivered = await assertSubscribersCaughtUp(subscribers, results);
      const unrecovered = subscribers.filter(s => s.events.some(e => e.type === 'sub' && e.ctx.wasRecovering && !e.ctx.recovered)).length;
      console.log(`# ${fault}: ${failed.length} publishes failed fast (max ${Math.max(...failed.map(r => r.ms))} ms), ` +
        `publishing resumed ${resumedAt - backAt} ms after Redis came back, ${acknowledged.length} acknowledged, ` +
        `${delivered} owed deliveries all made, ${unrecovered}/6 subscribers told recovered=false`);
      if (fault === 'restart') {
        assert.equal(unrecovered, 6, 'every subscriber learned of the new epoch with recovered=false');
      } else {
        assert.equal(unrecovered, 0, 'nothing was lost, so every subscriber recovered');
      }
      closeAll(...subscribers.map(s => s.client));
    }));
  });
}
