// Scenario 4: join/leave pushes (namespace join_leave + force_push_join_leave), and in a
// namespace with join_leave but without force_push_join_leave: only a subscriber that asked
// for them (SDK subscription option `joinLeave: true`) gets join/leave pushes.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  PROTOCOLS, NAMESPACES, startServer, tracked, newClient, connectClient, subscribeAndWait,
  connToken, waitForEvent, closeAll, uid, collect, delay,
} from '../harness.mjs';

// join_leave published, but pushed only to subscribers that ask (no force_push_join_leave).
const OPTIN_NS = {
  name: 'optin',
  allow_subscribe_for_client: true,
  presence: true,
  allow_presence_for_subscriber: true,
  allow_presence_for_client: true,
  join_leave: true,
};

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

describe('join / leave without force_push_join_leave', () => {
  let server;
  before(async () => {
    server = await startServer({ channel: { namespaces: [...NAMESPACES, OPTIN_NS] } });
  });
  after(async () => { if (server) await server.stop(); });

  for (const proto of PROTOCOLS) {
    test(`join/leave only reach a subscriber that asked with joinLeave: true [${proto.name}]`, tracked(() => server, async () => {
      const plain = newClient(server, proto, { token: connToken(server, uid('plain-')) });
      const asking = newClient(server, proto, { token: connToken(server, uid('asking-')) });
      const visitor = newClient(server, proto, { token: connToken(server, uid('visitor-')) });
      try {
        await connectClient(plain);
        await connectClient(asking);
        const cv = await connectClient(visitor);
        const channel = `optin:${uid('jl-')}-${proto.name}`;

        const subPlain = plain.newSubscription(channel);
        const plainJoins = collect(subPlain, 'join');
        const plainLeaves = collect(subPlain, 'leave');
        await subscribeAndWait(subPlain);

        const subAsking = asking.newSubscription(channel, { joinLeave: true });
        await subscribeAndWait(subAsking);

        const isVisitor = ctx => ctx.info && ctx.info.client === cv.client;
        const joined = waitForEvent(subAsking, 'join', { timeoutMs: 5000, filter: isVisitor });
        const subVisitor = visitor.newSubscription(channel);
        await subscribeAndWait(subVisitor);
        const j = await joined;
        assert.equal(j.channel, channel);
        assert.equal(j.info.client, cv.client);

        const left = waitForEvent(subAsking, 'leave', { timeoutMs: 5000, filter: isVisitor });
        subVisitor.unsubscribe();
        await left;

        // Give any stray push time to arrive at the subscriber that did not ask.
        await delay(1000);
        assert.deepEqual(plainJoins, [], 'no join pushes without joinLeave (no force_push_join_leave)');
        assert.deepEqual(plainLeaves, [], 'no leave pushes without joinLeave (no force_push_join_leave)');
      } finally {
        closeAll(plain, asking, visitor);
      }
    }));
  }
});
