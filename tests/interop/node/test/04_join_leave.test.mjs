// Scenario 4: join/leave pushes (namespace join_leave + force_push_join_leave).
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  PROTOCOLS, startServer, tracked, newClient, connectClient, subscribeAndWait,
  connToken, waitForEvent, closeAll, uid,
} from '../harness.mjs';

describe('join / leave', () => {
  let server;
  before(async () => { server = await startServer(); });
  after(async () => { if (server) await server.stop(); });

  for (const proto of PROTOCOLS) {
    test(`join and leave of another client are pushed [${proto.name}]`, tracked(() => server, async () => {
      const userA = uid('watcher-');
      const userB = uid('visitor-');
      const a = newClient(server, proto, { token: connToken(server, userA) });
      const b = newClient(server, proto, { token: connToken(server, userB) });
      try {
        await connectClient(a);
        const cb = await connectClient(b);
        const channel = `chat:${uid('jl-')}-${proto.name}`;
        // Subscription A does not ask for join_leave: force_push_join_leave delivers anyway.
        const subA = a.newSubscription(channel);
        await subscribeAndWait(subA);

        const isB = ctx => ctx.info && ctx.info.client === cb.client;
        const joined = waitForEvent(subA, 'join', { timeoutMs: 5000, filter: isB });
        const subB = b.newSubscription(channel);
        await subscribeAndWait(subB);
        const j = await joined;
        assert.equal(j.channel, channel);
        assert.equal(j.info.user, userB);
        assert.equal(j.info.client, cb.client);

        const left = waitForEvent(subA, 'leave', { timeoutMs: 5000, filter: isB });
        subB.unsubscribe();
        const l = await left;
        assert.equal(l.channel, channel);
        assert.equal(l.info.user, userB);
        assert.equal(l.info.client, cb.client);

        // Subscribing again joins again; a disconnecting client also produces a leave.
        const joinedAgain = waitForEvent(subA, 'join', { timeoutMs: 5000, filter: isB });
        await subscribeAndWait(subB);
        await joinedAgain;
        const leftOnDisconnect = waitForEvent(subA, 'leave', { timeoutMs: 5000, filter: isB });
        b.disconnect();
        const l2 = await leftOnDisconnect;
        assert.equal(l2.info.user, userB);
      } finally {
        closeAll(a, b);
      }
    }));
  }
});
