// Scenario 30: admission of new connections and identity from a gateway header.
// `client.connection_limit` and `client.connection_rate_limit` refuse the WebSocket upgrade
// with HTTP 503 (which npm `centrifuge` treats as a transport failure and retries with
// backoff), never a session that was already accepted. `client.user_id_http_header` lets a
// trusted gateway authenticate the user: the header's value becomes the user id of a
// connection that has no token.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  startServer, tracked, connToken, uid, WebSocket, api,
  connectClient, subscribeAndWait, waitFor, waitForEvent, withTimeout, delay, closeAll,
} from '../harness.mjs';
import { Centrifuge } from 'centrifuge';

/** The HTTP status of a WebSocket upgrade: 101 when it opened (then closed again). */
function upgradeStatus(server, headers = {}) {
  return withTimeout(new Promise(resolve => {
    const ws = new WebSocket(server.wsUrl, { headers });
    ws.on('open', () => { ws.close(); resolve(101); });
    ws.on('unexpected-response', (_req, res) => { res.resume(); resolve(res.statusCode); });
    ws.on('error', () => {});
  }), 5000, 'websocket upgrade outcome');
}

describe('client.connection_limit', () => {
  let server;
  before(async () => {
    server = await startServer({ client: { connection_limit: 2 } });
  });
  after(async () => { if (server) await server.stop(); });

  test('the connection over the limit gets 503 and the connected ones keep working', tracked(() => server, async () => {
    const channel = uid('news:limit_');
    const clients = [];
    try {
      for (const user of ['a', 'b']) {
        const client = new Centrifuge(server.wsUrl, { websocket: WebSocket, token: connToken(server, user) });
        clients.push(client);
        await connectClient(client);
      }
      assert.equal(await upgradeStatus(server), 503);

      const sub = clients[0].newSubscription(channel);
      await subscribeAndWait(sub);
      const received = waitForEvent(sub, 'publication');
      await api(server, 'publish', { channel, data: { still: 'served' } });
      assert.deepEqual((await received).data, { still: 'served' });

      // A slot freed by a disconnect is available again.
      clients.pop().disconnect();
      await waitFor(async () => (await upgradeStatus(server)) === 101, { what: 'upgrade admitted again' });
    } finally {
      closeAll(...clients);
    }
  }));
});

describe('client.connection_rate_limit', () => {
  let server;
  before(async () => {
    server = await startServer({ client: { connection_rate_limit: 3 } });
  });
  after(async () => { if (server) await server.stop(); });

  test('a burst beyond the bucket gets 503, and a token comes back after a second', tracked(() => server, async () => {
    const statuses = [];
    for (let i = 0; i < 5; i++) statuses.push(await upgradeStatus(server));
    assert.deepEqual(statuses, [101, 101, 101, 503, 503]);
    // The API and health are not client connections: they are never rate limited.
    await api(server, 'info', {});
    await delay(1100);
    assert.equal(await upgradeStatus(server), 101);
    assert.equal(await upgradeStatus(server), 503);
  }));
});

describe('client.user_id_http_header', () => {
  let server;
  before(async () => {
    server = await startServer({ client: { user_id_http_header: 'X-Gateway-User' } });
  });
  after(async () => { if (server) await server.stop(); });

  /** A `ws` WebSocket that sends the gateway header. */
  const withHeader = value => class extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, { headers: { 'X-Gateway-User': value } });
    }
  };

  async function presenceUsers(channel) {
    const reply = await api(server, 'presence', { channel });
    return Object.values(reply.presence).map(info => info.user).sort();
  }

  test('a connection without a token is the header\'s user; a token still wins', tracked(() => server, async () => {
    const channel = uid('chat:gateway_');
    const fromHeader = new Centrifuge(server.wsUrl, { websocket: withHeader('alice') });
    const withToken = new Centrifuge(server.wsUrl, {
      websocket: withHeader('mallory'),
      token: connToken(server, 'bob'),
    });
    try {
      for (const client of [fromHeader, withToken]) {
        await connectClient(client);
        await subscribeAndWait(client.newSubscription(channel));
      }
      assert.deepEqual(await presenceUsers(channel), ['alice', 'bob']);
    } finally {
      closeAll(fromHeader, withToken);
    }
  }));

  test('without the header or a token the connection is refused (3501)', tracked(() => server, async () => {
    const client = new Centrifuge(server.wsUrl, { websocket: WebSocket });
    try {
      const disconnected = waitForEvent(client, 'disconnected');
      client.connect();
      const ctx = await disconnected;
      assert.equal(ctx.code, 3501);
    } finally {
      client.disconnect();
    }
  }));
});
