// Scenario 11: app-level ping/pong (client.ping_interval 2s, client.pong_timeout 1s).
//  - JS SDK clients (JSON and Protobuf) answer the server's pings and stay connected for
//    ~7 s (several pings) without any disconnect/connecting event. maxServerPingDelay is
//    lowered to 2 s so that a server that stopped pinging would make the SDK reconnect
//    ("no ping") inside the window.
//  - A raw client that answers pings sees the advertised interval (ping 2, pong true) and
//    at least 3 pings in 7 s.
//  - A raw client that never answers is closed with 3012 "no pong" within ~4 s.
// The tests of this file run concurrently (they only wait).
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  PROTOCOLS, startServer, tracked, newClient, connectClient, subscribeAndWait, connToken,
  api, waitForEvent, closeAll, uid, openRaw, withTimeout, delay, waitFor,
} from '../harness.mjs';

const STAY_MS = 7000;

async function rawConnect(server, conn) {
  conn.ws.send(JSON.stringify({ id: 1, connect: { token: connToken(server, uid('raw-ping-')), name: 'raw-interop' } }));
  await waitFor(() => conn.messages.some(m => m.id === 1), { timeoutMs: 5000, what: 'connect reply' });
  const reply = conn.messages.find(m => m.id === 1);
  assert.ok(reply.connect, `connect reply: ${JSON.stringify(reply)}`);
  return reply.connect;
}

const isPing = m => m && typeof m === 'object' && Object.keys(m).length === 0;

describe('ping / pong', { concurrency: true }, () => {
  let server;
  before(async () => {
    server = await startServer({ client: { ping_interval: '2s', pong_timeout: '1s' } });
  });
  after(async () => { if (server) await server.stop(); });

  for (const proto of PROTOCOLS) {
    test(`SDK client stays connected across several pings [${proto.name}]`, tracked(() => server, async () => {
      const client = newClient(server, proto, {
        token: connToken(server, uid('pinged-')),
        maxServerPingDelay: 2000,
      });
      const trouble = [];
      try {
        await connectClient(client);
        const channel = `news:${uid('ping-')}-${proto.name}`;
        const sub = client.newSubscription(channel);
        await subscribeAndWait(sub);
        client.on('connecting', ctx => trouble.push(['connecting', ctx.code, ctx.reason]));
        client.on('disconnected', ctx => trouble.push(['disconnected', ctx.code, ctx.reason]));
        sub.on('subscribing', ctx => trouble.push(['subscribing', ctx.code, ctx.reason]));
        await delay(STAY_MS);
        assert.deepEqual(trouble, [], 'no state change while pings are answered');
        assert.equal(client.state, 'connected');
        // Still the same, working connection.
        const got = waitForEvent(sub, 'publication', { timeoutMs: 3000 });
        await api(server, 'publish', { channel, data: { after: 'pings' } });
        assert.deepEqual(proto.decode((await got).data), { after: 'pings' });
        assert.deepEqual(trouble, []);
      } finally {
        closeAll(client);
      }
    }));
  }

  test('raw client answering pings: ping 2 / pong true advertised, >= 3 pings in 7 s, stays open', tracked(() => server, async () => {
    const conn = await openRaw(server);
    let closed = null;
    conn.closed.then(c => { closed = c; });
    try {
      let pings = 0;
      conn.ws.on('message', (data, isBinary) => {
        if (isBinary) return;
        for (const line of data.toString().split('\n')) {
          if (line.trim() === '') continue;
          if (isPing(JSON.parse(line))) {
            pings++;
            conn.ws.send('{}');
          }
        }
      });
      const result = await rawConnect(server, conn);
      assert.equal(result.ping, 2, `connect result: ${JSON.stringify(result)}`);
      assert.equal(result.pong, true, `connect result: ${JSON.stringify(result)}`);
      await delay(STAY_MS);
      assert.equal(closed, null, `connection closed: ${JSON.stringify(closed)}`);
      assert.ok(pings >= 3, `pings received in ${STAY_MS} ms: ${pings}`);
    } finally {
      conn.ws.terminate();
    }
  }));

  test('raw client that never answers pings is closed with 3012 "no pong"', tracked(() => server, async () => {
    const conn = await openRaw(server);
    try {
      const started = Date.now();
      await rawConnect(server, conn);
      // First ping within [1 s, 2 s), then pong_timeout 1 s: closed by ~3 s.
      const close = await withTimeout(conn.closed, 4500, 'close for a missing pong');
      assert.equal(close.code, 3012, `close: ${JSON.stringify(close)}`);
      assert.equal(close.reason, 'no pong');
      assert.ok(conn.messages.some(isPing), 'a ping was sent before the close');
      assert.ok(Date.now() - started <= 4500);
    } finally {
      conn.ws.terminate();
    }
  }));
});

describe('closing handshake', () => {
  let server;
  before(async () => { server = await startServer(); });
  after(async () => { if (server) await server.stop(); });

  // A client that closes first gets the server's close frame back with its own code (RFC 6455
  // §5.5.1), so it sees a clean close rather than a dropped connection (1006).
  test('a client-initiated close is answered with the same code', tracked(() => server, async () => {
    const { ws, closed } = await openRaw(server);
    ws.send(JSON.stringify({ id: 1, connect: { token: connToken(server, uid('closer-')) } }));
    await delay(100);
    ws.close(4000, 'bye');
    const info = await withTimeout(closed, 3000, 'close');
    assert.equal(info.code, 4000, 'the server echoed the close code');
  }));
});
