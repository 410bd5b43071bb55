// Scenario 1: connect with a JWT, subscribe, receive a publication sent with POST /api/publish.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  PROTOCOLS, startServer, tracked, newClient, connectClient, subscribeAndWait,
  connToken, api, waitForEvent, closeAll, uid,
} from '../harness.mjs';

describe('connect + subscribe + API publish', () => {
  let server;
  before(async () => { server = await startServer(); });
  after(async () => { if (server) await server.stop(); });

  for (const proto of PROTOCOLS) {
    test(`receives an API publication [${proto.name}]`, tracked(() => server, async () => {
      const user = uid('u1-');
      const client = newClient(server, proto, { token: connToken(server, user) });
      try {
        const connected = await connectClient(client);
        assert.equal(typeof connected.client, 'string');
        assert.ok(connected.client.length > 0, 'connected ctx carries the client id');
        assert.equal(connected.transport, 'websocket');
        assert.equal(client.state, 'connected');

        const channel = `news:${uid()}-${proto.name}`;
        const sub = client.newSubscription(channel);
        const subscribed = await subscribeAndWait(sub);
        assert.equal(subscribed.channel, channel);
        assert.equal(sub.state, 'subscribed');

        const payload = { text: 'hello from the API', n: 42, nested: { ok: true, list: [1, 2, 3] } };
        const gotPub = waitForEvent(sub, 'publication', { timeoutMs: 5000 });
        const result = await api(server, 'publish', { channel, data: payload });
        // `news` has no history: the result carries no offset/epoch (omitted or zero).
        assert.ok(!result.offset, `no offset without history, got ${JSON.stringify(result)}`);
        const pub = await gotPub;
        assert.equal(pub.channel, channel);
        assert.deepEqual(proto.decode(pub.data), payload);
        assert.equal(pub.info, undefined, 'API publications carry no ClientInfo');
      } finally {
        closeAll(client);
      }
    }));
  }
});
