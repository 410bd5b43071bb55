// Scenario 10: bad input over raw WebSockets (JSON protocol unless stated) and the HTTP API.
// A well-behaved SDK client stays connected and subscribed throughout and still receives
// a publication afterwards.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  PROTOCOLS, startServer, tracked, newClient, connectClient, subscribeAndWait,
  connToken, api, apiRaw, waitForEvent, closeAll, uid, openRaw, withTimeout,
} from '../harness.mjs';

const CLOSE_TIMEOUT = 5000;

/** Open a raw JSON connection and complete the connect handshake; returns the reply. */
async function rawConnected(server, user, extraConnectFields = {}, extraTopLevel = {}) {
  const conn = await openRaw(server);
  const cmd = {
    id: 1,
    connect: { token: connToken(server, user), name: 'raw-interop', ...extraConnectFields },
    ...extraTopLevel,
  };
  conn.ws.send(JSON.stringify(cmd));
  await withTimeout(waitUntil(() => conn.messages.some(m => m.id === 1)), CLOSE_TIMEOUT, 'connect reply');
  const reply = conn.messages.find(m => m.id === 1);
  return { ...conn, reply };
}

async function waitUntil(pred) {
  while (!pred()) {
    await new Promise(r => setTimeout(r, 10));
  }
}

describe('bad input does not affect other clients', () => {
  let server;
  before(async () => { server = await startServer(); });
  after(async () => { if (server) await server.stop(); });

  for (const proto of PROTOCOLS) {
    test(`raw protocol violations are closed with the right codes; SDK client unaffected [${proto.name}]`, tracked(() => server, async () => {
      // The observer: a normal SDK client, subscribed for the whole test.
      const observer = newClient(server, proto, { token: connToken(server, uid('observer-')) });
      const trouble = [];
      const raws = [];
      try {
        await connectClient(observer);
        const channel = `news:${uid('observed-')}-${proto.name}`;
        const sub = observer.newSubscription(channel);
        await subscribeAndWait(sub);
        // From here on the observer must see no state change at all.
        observer.on('connecting', ctx => trouble.push(['connecting', ctx]));
        observer.on('disconnected', ctx => trouble.push(['disconnected', ctx]));
        sub.on('unsubscribed', ctx => trouble.push(['unsubscribed', ctx]));
        sub.on('subscribing', ctx => trouble.push(['subscribing', ctx]));

        // 1. Connect with unknown extra fields (in the command and in the request) works.
        const ok = await rawConnected(server, uid('raw-ok-'),
          { unknown_field: 'x', nested_unknown: { a: [1, 2, { b: null }] } },
          { extra_top_level: true });
        raws.push(ok.ws);
        assert.equal(ok.reply.error, undefined, `connect reply: ${JSON.stringify(ok.reply)}`);
        assert.ok(ok.reply.connect, `connect reply: ${JSON.stringify(ok.reply)}`);
        assert.equal(typeof ok.reply.connect.client, 'string');
        assert.ok(ok.reply.connect.client.length > 0);
        assert.equal(typeof ok.reply.connect.version, 'string');
        assert.equal(ok.reply.connect.ping, 25);
        assert.equal(ok.reply.connect.pong, true);

        // 2. Malformed JSON frame after connect -> 3501.
        const mal = await rawConnected(server, uid('raw-mal-'));
        raws.push(mal.ws);
        assert.ok(mal.reply.connect);
        mal.ws.send('{"id":2,"subscribe":{"channel":"news:x"');
        const malClose = await withTimeout(mal.closed, CLOSE_TIMEOUT, 'close after malformed JSON');
        assert.equal(malClose.code, 3501, `close: ${JSON.stringify(malClose)}`);
        assert.equal(malClose.reason, 'bad request');

        // 3. Frame above the 64 KiB message size limit -> 1009.
        const big = await rawConnected(server, uid('raw-big-'));
        raws.push(big.ws);
        const filler = 'x'.repeat(70 * 1024);
        big.ws.send(JSON.stringify({ id: 2, publish: { channel: 'news:big', data: { filler } } }));
        const bigClose = await withTimeout(big.closed, CLOSE_TIMEOUT, 'close after oversized frame');
        assert.equal(bigClose.code, 1009, `close: ${JSON.stringify(bigClose)}`);

        // 4. A command before connect -> 3501.
        const early = await openRaw(server);
        raws.push(early.ws);
        early.ws.send(JSON.stringify({ id: 1, subscribe: { channel: 'news:x' } }));
        const earlyClose = await withTimeout(early.closed, CLOSE_TIMEOUT, 'close after subscribe-before-connect');
        assert.equal(earlyClose.code, 3501, `close: ${JSON.stringify(earlyClose)}`);
        assert.deepEqual(early.messages, [], 'no reply to a command sent before connect');

        // 5. Garbage as the first frame -> 3501.
        const garbage = await openRaw(server);
        raws.push(garbage.ws);
        garbage.ws.send('this is not json');
        const garbageClose = await withTimeout(garbage.closed, CLOSE_TIMEOUT, 'close after garbage first frame');
        assert.equal(garbageClose.code, 3501);

        // 6. Protobuf subprotocol is echoed; a malformed protobuf frame -> 3501.
        const pb = await openRaw(server, { protocols: ['centrifuge-protobuf'] });
        raws.push(pb.ws);
        assert.equal(pb.ws.protocol, 'centrifuge-protobuf', 'server echoes the requested subprotocol');
        // Length prefix 5, then a field with an invalid wire type (7) and truncated bytes.
        pb.ws.send(Buffer.from([0x05, 0x0f, 0xff, 0xff, 0xff, 0xff]));
        const pbClose = await withTimeout(pb.closed, CLOSE_TIMEOUT, 'close after malformed protobuf');
        assert.equal(pbClose.code, 3501, `close: ${JSON.stringify(pbClose)}`);

        // The well-behaved connection from step 1 is still usable: subscribe works.
        ok.ws.send(JSON.stringify({ id: 2, subscribe: { channel: `news:${uid('raw-')}` } }));
        await withTimeout(waitUntil(() => ok.messages.some(m => m.id === 2)), CLOSE_TIMEOUT, 'subscribe reply');
        const subReply = ok.messages.find(m => m.id === 2);
        assert.deepEqual(subReply.error, undefined, JSON.stringify(subReply));
        assert.ok(subReply.subscribe, JSON.stringify(subReply));
        ok.ws.close(1000);
        await withTimeout(ok.closed, CLOSE_TIMEOUT, 'clean close');

        // The observer never noticed anything and still gets publications.
        const got = waitForEvent(sub, 'publication', { timeoutMs: 5000 });
        await api(server, 'publish', { channel, data: { after: 'storm' } });
        assert.deepEqual(proto.decode((await got).data), { after: 'storm' });
        assert.deepEqual(trouble, []);
        assert.equal(observer.state, 'connected');
        assert.equal(sub.state, 'subscribed');
      } finally {
        for (const ws of raws) {
          try { ws.terminate(); } catch (e) { /* ignore */ }
        }
        closeAll(observer);
      }
    }));
  }

  test('HTTP API: malformed JSON body -> 400, missing or wrong key -> 401, GET -> 405', tracked(() => server, async () => {
    const malformed = await apiRaw(server, '/publish', {
      body: '{"channel": "news:x", "data": ',
      headers: { 'X-API-Key': server.apiKey, 'Content-Type': 'application/json' },
    });
    assert.equal(malformed.status, 400, `malformed body: ${malformed.status} ${malformed.text}`);

    const noKey = await apiRaw(server, '/publish', {
      body: JSON.stringify({ channel: 'news:x', data: { a: 1 } }),
      headers: { 'Content-Type': 'application/json' },
    });
    assert.equal(noKey.status, 401);

    const wrongKey = await apiRaw(server, '/publish', {
      body: JSON.stringify({ channel: 'news:x', data: { a: 1 } }),
      headers: { 'X-API-Key': 'wrong', 'Content-Type': 'application/json' },
    });
    assert.equal(wrongKey.status, 401);

    // `Authorization: apikey <key>` is accepted as well.
    const authHeader = await apiRaw(server, '/publish', {
      body: JSON.stringify({ channel: 'news:x', data: { a: 1 } }),
      headers: { Authorization: `apikey ${server.apiKey}`, 'Content-Type': 'application/json' },
    });
    assert.equal(authHeader.status, 200);
    assert.deepEqual(JSON.parse(authHeader.text), { result: {} });

    const get = await fetch(`${server.apiUrl}/publish`, { method: 'GET', signal: AbortSignal.timeout(5000) });
    await get.arrayBuffer();
    assert.equal(get.status, 405);

    // Errors of a valid request come back in the envelope with HTTP 200.
    const unknownNs = await apiRaw(server, '/publish', {
      body: JSON.stringify({ channel: 'nope:x', data: { a: 1 } }),
      headers: { 'X-API-Key': server.apiKey },
    });
    assert.equal(unknownNs.status, 200);
    assert.deepEqual(JSON.parse(unknownNs.text), { error: { code: 102, message: 'unknown channel' } });
  }));
});
