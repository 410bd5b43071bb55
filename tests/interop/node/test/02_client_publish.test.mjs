// Scenario 2: a subscriber publishes from the client (namespace allow_publish_for_subscriber);
// another client receives it with info.user / info.client of the publisher.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  PROTOCOLS, startServer, tracked, newClient, connectClient, subscribeAndWait,
  connToken, waitForEvent, closeAll, uid,
} from '../harness.mjs';

describe('client-side publish', () => {
  let server;
  before(async () => { server = await startServer(); });
  after(async () => { if (server) await server.stop(); });

  for (const proto of PROTOCOLS) {
    test(`publication from a subscriber reaches another client with info [${proto.name}]`, tracked(() => server, async () => {
      const userA = uid('reader-');
      const userB = uid('writer-');
      const a = newClient(server, proto, { token: connToken(server, userA) });
      const b = newClient(server, proto, { token: connToken(server, userB) });
      try {
        await connectClient(a);
        const bConnected = await connectClient(b);
        const channel = `chat:${uid('pub-')}-${proto.name}`;
        const subA = a.newSubscription(channel);
        const subB = b.newSubscription(channel);
        await subscribeAndWait(subA);
        await subscribeAndWait(subB);

        const payload = { text: 'from B', at: 1 };
        const gotA = waitForEvent(subA, 'publication', { timeoutMs: 5000 });
        const gotB = waitForEvent(subB, 'publication', { timeoutMs: 5000 });
        const res = await subB.publish(proto.encode(payload));
        assert.deepEqual(res, {});

        const pubA = await gotA;
        assert.deepEqual(proto.decode(pubA.data), payload);
        assert.ok(pubA.info, 'client publication carries ClientInfo');
        assert.equal(pubA.info.user, userB);
        assert.equal(pubA.info.client, bConnected.client);
        // `chat` keeps history, so the publication has an offset.
        assert.equal(pubA.offset, 1);

        const pubB = await gotB;
        assert.deepEqual(proto.decode(pubB.data), payload);
        assert.equal(pubB.info.user, userB);
      } finally {
        closeAll(a, b);
      }
    }));

    test(`publish without subscribing is refused in a namespace with allow_publish_for_subscriber only [${proto.name}]`, tracked(() => server, async () => {
      const c = newClient(server, proto, { token: connToken(server, uid('nosub-')) });
      try {
        await connectClient(c);
        await assert.rejects(
          c.publish(`chat:${uid('nosub-')}`, proto.encode({ x: 1 })),
          err => err.code === 103,
        );
      } finally {
        closeAll(c);
      }
    }));
  }
});
