// Scenario 8: a connection token with a wrong signature -> the server closes with 3500
// "invalid token"; the SDK goes to `disconnected` and does not reconnect.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  PROTOCOLS, startServer, tracked, newClient, signJwt, waitForEvent, closeAll, uid,
  nowSec, delay,
} from '../harness.mjs';

describe('invalid connection token', () => {
  let server;
  before(async () => { server = await startServer(); });
  after(async () => { if (server) await server.stop(); });

  for (const proto of PROTOCOLS) {
    test(`wrong signature -> disconnected 3500, no reconnect [${proto.name}]`, tracked(() => server, async () => {
      const forged = signJwt({ sub: uid('forger-'), exp: nowSec() + 3600 }, 'definitely-not-the-secret');
      const client = newClient(server, proto, { token: forged });
      const connectedEvents = [];
      client.on('connected', ctx => connectedEvents.push(ctx));
      try {
        const disconnected = waitForEvent(client, 'disconnected', { timeoutMs: 5000 });
        client.connect();
        const ctx = await disconnected;
        assert.equal(ctx.code, 3500, `disconnected ctx: ${JSON.stringify(ctx)}`);
        assert.equal(ctx.reason, 'invalid token');
        assert.equal(client.state, 'disconnected');

        // Terminal: no new connection attempt within 3 s.
        const attempts = [];
        client.on('connecting', c => attempts.push(c));
        client.on('state', c => attempts.push(c));
        await delay(3000);
        assert.deepEqual(attempts, [], 'SDK must not reconnect after 3500');
        assert.equal(client.state, 'disconnected');
        assert.deepEqual(connectedEvents, []);
      } finally {
        closeAll(client);
      }
    }));

    test(`token signed with an unsupported alg (none) -> 3500 [${proto.name}]`, tracked(() => server, async () => {
      const b64 = o => Buffer.from(JSON.stringify(o)).toString('base64url');
      const unsigned = `${b64({ alg: 'none', typ: 'JWT' })}.${b64({ sub: 'x', exp: nowSec() + 3600 })}.`;
      const client = newClient(server, proto, { token: unsigned });
      try {
        const disconnected = waitForEvent(client, 'disconnected', { timeoutMs: 5000 });
        client.connect();
        const ctx = await disconnected;
        assert.equal(ctx.code, 3500);
      } finally {
        closeAll(client);
      }
    }));
  }
});
