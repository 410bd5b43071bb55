// Scenario 10: bad input over raw WebSockets (JSON protocol unless stated) and the HTTP API.
// A well-behaved SDK client stays connected and subscribed throughout and still receives
// a publication afterwards; the server process is still alive (and never panicked) at the end.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';

import {
  PROTOCOLS, startServer, tracked, newClient, connectClient, subscribeAndWait,
  connToken, api, apiRaw, waitForEvent, closeAll, uid, openRaw, withTimeout,
  nowSec, delay,
} from '../harness.mjs';

const CLOSE_TIMEOUT = 5000;
// websocket.message_size_limit default: 65536 bytes.
const OVERSIZED = 70 * 1024;

// --- Minimal protobuf encoding of client.proto Commands (varint-length-delimited).
function varint(n) {
  const out = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return Buffer.from(out);
}
function pbVarintField(field, value) {
  return Buffer.concat([varint(field << 3), varint(value)]);
}
function pbBytesField(field, bytes) {
  const b = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes);
  return Buffer.concat([varint((field << 3) | 2), varint(b.length), b]);
}
/** Command{id=1, <field>=body} prefixed by its varint length. */
function pbCommand(id, field, body) {
  const msg = Buffer.concat([pbVarintField(1, id), pbBytesField(field, body)]);
  return Buffer.concat([varint(msg.length), msg]);
}
const PB_CONNECT = 4; // Command.connect
const PB_PUBLISH = 7; // Command.publish

/** Top-level fields of the length-prefixed Reply messages of one binary frame. */
function pbReplies(frame) {
  const replies = [];
  let i = 0;
  const readVarint = () => {
    let n = 0;
    let mul = 1;
    for (;;) {
      const b = frame[i++];
      n += (b & 0x7f) * mul;
      if ((b & 0x80) === 0) return n;
      mul *= 128;
    }
  };
  while (i < frame.length) {
    const len = readVarint();
    const end = i + len;
    const fields = {};
    while (i < end) {
      const key = readVarint();
      const field = key >> 3;
      const wire = key & 7;
      if (wire === 0) fields[field] = readVarint();
      else if (wire === 2) {
        const l = readVarint();
        fields[field] = frame.subarray(i, i + l);
        i += l;
      } else throw new Error(`unexpected wire type ${wire}`);
    }
    replies.push(fields);
  }
  return replies;
}
const PB_REPLY_ID = 1;
const PB_REPLY_ERROR = 2;
const PB_REPLY_CONNECT = 5;

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

/** HS256 JWT over a payload given as raw JSON text (to send number literals verbatim). */
function signRawJwt(payloadJson, secret) {
  const b64 = b => Buffer.from(b).toString('base64url');
  const header = b64(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const payload = b64(payloadJson);
  const sig = createHmac('sha256', secret).update(`${header}.${payload}`).digest('base64url');
  return `${header}.${payload}.${sig}`;
}

/** HTTP API bad input; each check is made while the observer stays connected. */
async function httpApiBadInput(server) {
  const malformed = await apiRaw(server, '/publish', {
    body: '{"channel": "news:x", "data": ',
    headers: { 'X-API-Key': server.apiKey, 'Content-Type': 'application/json' },
  });
  assert.equal(malformed.status, 400, `malformed body: ${malformed.status} ${malformed.text}`);

  const noKey = await apiRaw(server, '/publish', {
    body: JSON.stringify({ channel: 'news:x', data: { a: 1 } }),
    headers: { 'Content-Type': 'application/json' },
  });
  assert.equal(noKey.status, 401, `no key: ${noKey.status} ${noKey.text}`);

  const wrongKey = await apiRaw(server, '/publish', {
    body: JSON.stringify({ channel: 'news:x', data: { a: 1 } }),
    headers: { 'X-API-Key': 'wrong', 'Content-Type': 'application/json' },
  });
  assert.equal(wrongKey.status, 401, `wrong key: ${wrongKey.status} ${wrongKey.text}`);

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
}

/**
 * Connect over raw JSON with the given token. Resolves with
 * { kind: 'connected'|'error'|'closed', reply?, close?, conn }.
 */
async function rawConnectOutcome(server, token) {
  const conn = await openRaw(server);
  conn.ws.send(JSON.stringify({ id: 1, connect: { token, name: 'raw-interop' } }));
  let close = null;
  conn.closed.then(c => { close = c; });
  await withTimeout(waitUntil(() => close !== null || conn.messages.some(m => m.id === 1)),
    CLOSE_TIMEOUT, 'connect reply or close');
  const reply = conn.messages.find(m => m.id === 1);
  if (reply && reply.connect) return { kind: 'connected', reply, conn };
  if (reply && reply.error) return { kind: 'error', reply, conn };
  return { kind: 'closed', close, conn };
}

describe('bad input does not affect other clients', () => {
  let server;
  before(async () => { server = await startServer(); });
  after(async () => { if (server) await server.stop(); });

  for (const proto of PROTOCOLS) {
    test(`raw protocol violations and HTTP API bad input; SDK client unaffected [${proto.name}]`, tracked(() => server, async () => {
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

        // 1b. Unknown fields are ignored in a subscribe command too.
        ok.ws.send('{"id":2,"subscribe":{"channel":"news:x","unknown":{"a":1}}}');
        await withTimeout(waitUntil(() => ok.messages.some(m => m.id === 2)), CLOSE_TIMEOUT, 'subscribe reply');
        const subReply = ok.messages.find(m => m.id === 2);
        assert.equal(subReply.error, undefined, `subscribe with an unknown field: ${JSON.stringify(subReply)}`);
        assert.ok(subReply.subscribe, `subscribe with an unknown field: ${JSON.stringify(subReply)}`);

        // 2. Malformed JSON frame after connect -> 3501.
        const mal = await rawConnected(server, uid('raw-mal-'));
        raws.push(mal.ws);
        assert.ok(mal.reply.connect);
        mal.ws.send('{"id":2,"subscribe":{"channel":"news:x"');
        const malClose = await withTimeout(mal.closed, CLOSE_TIMEOUT, 'close after malformed JSON');
        assert.equal(malClose.code, 3501, `close: ${JSON.stringify(malClose)}`);
        assert.equal(malClose.reason, 'bad request');

        // 2b. A valid command followed by a garbage line in the same frame: the valid
        // command is answered first, then the parse error closes with 3501.
        const half = await rawConnected(server, uid('raw-half-'));
        raws.push(half.ws);
        assert.ok(half.reply.connect);
        half.ws.send('{"id":2,"subscribe":{"channel":"news:y"}}\n{bad');
        const halfClose = await withTimeout(half.closed, CLOSE_TIMEOUT, 'close after valid command + garbage line');
        const halfReply = half.messages.find(m => m.id === 2);
        assert.ok(halfReply, `no reply to id 2 before the close (${JSON.stringify(halfClose)}); ` +
          `messages: ${JSON.stringify(half.messages)}`);
        assert.equal(halfReply.error, undefined, `reply to id 2: ${JSON.stringify(halfReply)}`);
        assert.ok(halfReply.subscribe, `reply to id 2: ${JSON.stringify(halfReply)}`);
        assert.equal(halfClose.code, 3501, `close: ${JSON.stringify(halfClose)}`);

        // 3. JSON text frame above the 64 KiB message size limit -> 1009.
        const big = await rawConnected(server, uid('raw-big-'));
        raws.push(big.ws);
        const filler = 'x'.repeat(OVERSIZED);
        big.ws.send(JSON.stringify({ id: 2, publish: { channel: 'news:big', data: { filler } } }));
        const bigClose = await withTimeout(big.closed, CLOSE_TIMEOUT, 'close after oversized JSON frame');
        assert.equal(bigClose.code, 1009, `close: ${JSON.stringify(bigClose)}`);

        // 3b. Protobuf binary frame above the limit -> 1009.
        const pbBig = await openRaw(server, { protocols: ['centrifuge-protobuf'] });
        raws.push(pbBig.ws);
        assert.equal(pbBig.ws.protocol, 'centrifuge-protobuf');
        pbBig.ws.send(pbCommand(1, PB_CONNECT, Buffer.concat([
          pbBytesField(1, connToken(server, uid('raw-pbbig-'))),
          pbBytesField(4, 'raw-interop'),
        ])));
        await withTimeout(waitUntil(() => pbBig.messages.length > 0), CLOSE_TIMEOUT, 'protobuf connect reply');
        const [pbConnect] = pbReplies(pbBig.messages[0]);
        assert.equal(pbConnect[PB_REPLY_ID], 1, 'protobuf connect reply id');
        assert.equal(pbConnect[PB_REPLY_ERROR], undefined, 'protobuf connect: no error');
        assert.ok(pbConnect[PB_REPLY_CONNECT], 'protobuf connect reply carries a ConnectResult');
        pbBig.ws.send(pbCommand(2, PB_PUBLISH, Buffer.concat([
          pbBytesField(1, 'news:big'),
          pbBytesField(2, JSON.stringify({ filler: 'y'.repeat(OVERSIZED) })),
        ])));
        const pbBigClose = await withTimeout(pbBig.closed, CLOSE_TIMEOUT, 'close after oversized protobuf frame');
        assert.equal(pbBigClose.code, 1009, `close: ${JSON.stringify(pbBigClose)}`);

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

        // 7. Connection tokens with a huge `exp` (1e19 > i64::MAX, as an exponent literal
        // and as an integer literal): either the connection works or it is refused with
        // a normal code; the server must not crash or panic.
        const user = uid('raw-hugeexp-');
        for (const expText of ['1e19', '10000000000000000000']) {
          const token = signRawJwt(`{"sub":"${user}","iat":${nowSec()},"exp":${expText}}`, server.secret);
          const outcome = await rawConnectOutcome(server, token);
          raws.push(outcome.conn.ws);
          const desc = `exp ${expText}: ${JSON.stringify({ kind: outcome.kind, reply: outcome.reply, close: outcome.close })}`;
          if (outcome.kind === 'connected') {
            // The connection is really usable.
            outcome.conn.ws.send(JSON.stringify({ id: 2, subscribe: { channel: `news:${uid('hugeexp-')}` } }));
            await withTimeout(waitUntil(() => outcome.conn.messages.some(m => m.id === 2)), CLOSE_TIMEOUT,
              `subscribe reply on the connection with ${desc}`);
            const r = outcome.conn.messages.find(m => m.id === 2);
            assert.ok(r.subscribe, `subscribe after ${desc}: ${JSON.stringify(r)}`);
          } else if (outcome.kind === 'error') {
            assert.ok(outcome.reply.error.code >= 100 && outcome.reply.error.code < 200, desc);
          } else {
            const c = outcome.close.code;
            assert.ok((c >= 3000 && c <= 3999) || (c >= 4000 && c <= 4999), `abnormal close for ${desc}`);
          }
          await delay(200);
          server.assertNoPanic(desc);
        }

        // 8. HTTP API bad input, with the observer connected.
        await httpApiBadInput(server);

        // The well-behaved connection from step 1 is still usable and closes cleanly.
        ok.ws.send(JSON.stringify({ id: 3, subscribe: { channel: `news:${uid('raw-')}` } }));
        await withTimeout(waitUntil(() => ok.messages.some(m => m.id === 3)), CLOSE_TIMEOUT, 'subscribe reply');
        const subReply3 = ok.messages.find(m => m.id === 3);
        assert.deepEqual(subReply3.error, undefined, JSON.stringify(subReply3));
        assert.ok(subReply3.subscribe, JSON.stringify(subReply3));
        ok.ws.close(1000);
        await withTimeout(ok.closed, CLOSE_TIMEOUT, 'clean close');

        // The observer never noticed anything and still gets publications.
        const got = waitForEvent(sub, 'publication', { timeoutMs: 5000 });
        await api(server, 'publish', { channel, data: { after: 'storm' } });
        assert.deepEqual(proto.decode((await got).data), { after: 'storm' });
        assert.deepEqual(trouble, []);
        assert.equal(observer.state, 'connected');
        assert.equal(sub.state, 'subscribed');

        // And the server process is still there, healthy, and never panicked.
        await server.assertAlive('after bad input');
      } finally {
        for (const ws of raws) {
          try { ws.terminate(); } catch (e) { /* ignore */ }
        }
        closeAll(observer);
      }
    }));
  }
});
