// Scenario 7: subscribe errors surface on the subscription: 102 unknown namespace,
// 103 namespace that allows nothing.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  PROTOCOLS, startServer, tracked, newClient, connectClient, connToken, waitForEvent,
  closeAll, uid,
} from '../harness.mjs';

describe('subscribe errors', () => {
  let server;
  before(async () => { server = await startServer(); });
  after(async () => { if (server) await server.stop(); });

  const cases = [
    { channel: 'nope:x', code: 102, reason: 'unknown channel' },
    { channel: 'locked:x', code: 103, reason: 'permission denied' },
  ];

  for (const proto of PROTOCOLS) {
    for (const c of cases) {
      test(`${c.channel} -> ${c.code} [${proto.name}]`, tracked(() => server, async () => {
        const client = newClient(server, proto, { token: connToken(server, uid('err-')) });
        try {
          await connectClient(client);
          const subErrors = [];
          const sub = client.newSubscription(c.channel);
          sub.on('error', ctx => subErrors.push(ctx));
          const unsubscribed = waitForEvent(sub, 'unsubscribed', { timeoutMs: 5000 });
          sub.subscribe();
          const ctx = await unsubscribed;
          assert.equal(ctx.channel, c.channel);
          assert.equal(ctx.code, c.code, `unsubscribed ctx: ${JSON.stringify(ctx)}`);
          assert.equal(ctx.reason, c.reason);
          assert.equal(sub.state, 'unsubscribed');
          // A permanent error: no resubscribe attempts were reported as errors.
          assert.deepEqual(subErrors, []);
          // sub.ready() rejects for an unsubscribed subscription.
          await assert.rejects(sub.ready(500));
          assert.equal(client.state, 'connected');
        } finally {
          closeAll(client);
        }
      }));
    }
  }
});
