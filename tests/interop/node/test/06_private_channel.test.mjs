// Scenario 6: `$` private channel requires a subscription token (claims sub, channel, exp).
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  PROTOCOLS, startServer, tracked, newClient, connectClient, subscribeAndWait,
  connToken, subToken, api, waitForEvent, closeAll, uid,
} from '../harness.mjs';

describe('private channel with subscription token', () => {
  let server;
  before(async () => { server = await startServer(); });
  after(async () => { if (server) await server.stop(); });

  for (const proto of PROTOCOLS) {
    test(`subscribe with a token from getToken, then receive [${proto.name}]`, tracked(() => server, async () => {
      const user = uid('priv-');
      const channel = `$chat:${uid('secret-')}-${proto.name}`;
      const client = newClient(server, proto, { token: connToken(server, user) });
      const tokenRequests = [];
      try {
        await connectClient(client);
        const sub = client.newSubscription(channel, {
          getToken: async ctx => {
            tokenRequests.push(ctx.channel);
            return subToken(server, user, ctx.channel);
          },
        });
        const subscribed = await subscribeAndWait(sub);
        assert.equal(subscribed.channel, channel);
        assert.deepEqual(tokenRequests, [channel]);

        const got = waitForEvent(sub, 'publication', { timeoutMs: 5000 });
        await api(server, 'publish', { channel, data: { secret: true } });
        assert.deepEqual(proto.decode((await got).data), { secret: true });
      } finally {
        closeAll(client);
      }
    }));

    test(`subscribe with a static token option [${proto.name}]`, tracked(() => server, async () => {
      const user = uid('priv2-');
      const channel = `$chat:${uid('secret-')}-${proto.name}`;
      const client = newClient(server, proto, { token: connToken(server, user) });
      try {
        await connectClient(client);
        const sub = client.newSubscription(channel, { token: subToken(server, user, channel) });
        await subscribeAndWait(sub);
        assert.equal(sub.state, 'subscribed');
      } finally {
        closeAll(client);
      }
    }));

    test(`subscribe without a token fails with 103 [${proto.name}]`, tracked(() => server, async () => {
      const user = uid('nopriv-');
      const channel = `$chat:${uid('secret-')}-${proto.name}`;
      const client = newClient(server, proto, { token: connToken(server, user) });
      try {
        await connectClient(client);
        const sub = client.newSubscription(channel);
        const unsubscribed = waitForEvent(sub, 'unsubscribed', { timeoutMs: 5000 });
        sub.subscribe();
        const ctx = await unsubscribed;
        assert.equal(ctx.code, 103, `unsubscribed ctx: ${JSON.stringify(ctx)}`);
        assert.equal(ctx.reason, 'permission denied');
        assert.equal(sub.state, 'unsubscribed');
        // The connection itself is unaffected.
        assert.equal(client.state, 'connected');
      } finally {
        closeAll(client);
      }
    }));

    test(`subscription token signed with a wrong key fails with 103 [${proto.name}]`, tracked(() => server, async () => {
      const user = uid('badsig-');
      const channel = `$chat:${uid('secret-')}-${proto.name}`;
      const client = newClient(server, proto, { token: connToken(server, user) });
      try {
        await connectClient(client);
        const forged = subToken({ secret: 'not-the-server-secret' }, user, channel);
        const sub = client.newSubscription(channel, { token: forged });
        const unsubscribed = waitForEvent(sub, 'unsubscribed', { timeoutMs: 5000 });
        sub.subscribe();
        const ctx = await unsubscribed;
        assert.equal(ctx.code, 103);
        assert.equal(client.state, 'connected');
      } finally {
        closeAll(client);
      }
    }));
  }
});
