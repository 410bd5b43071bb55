// Scenario 15: unidirectional transports (spec §2.6): uni_websocket, uni_sse and
// uni_http_stream. A ConnectRequest (query `cf_connect`, first WebSocket message, or POST
// body) gives a bare `connect` Push, then Pushes of the server-side subscriptions (token
// `channels` claim or ConnectRequest `subs` keys). Connect errors become disconnect Pushes
// (mapped codes), and an API disconnect shows up as a disconnect Push before the stream ends.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  startServer, tracked, connToken, signJwt, nowSec, api, waitFor, uid, withTimeout,
} from '../harness.mjs';
import {
  httpBase, wsBase, openHttpStream, openEventSource, openUniWebSocket, cfConnectQuery, isPing,
  STREAM_TIMEOUT,
} from '../http_transports.mjs';

const CONFIG = {
  uni_websocket: { enabled: true },
  uni_sse: { enabled: true },
  uni_http_stream: { enabled: true },
};

const TRANSPORTS = ['uni_websocket', 'uni_sse', 'uni_http_stream'];

/** Pushes that are not pings. */
function real(pushes) {
  return pushes.filter(p => !isPing(p));
}

/** Wait for n non-ping pushes; fails at once if `endedEarly()` reports the stream's end. */
async function waitPushes(get, n, what, endedEarly = () => null) {
  await waitFor(() => {
    if (real(get()).length >= n) return true;
    const e = endedEarly();
    if (e) throw new Error(`stream ended (${JSON.stringify(e)}) before ${n} pushes: ${what}; have ${JSON.stringify(get())}`);
    return false;
  }, { timeoutMs: STREAM_TIMEOUT, what: `${n} pushes: ${what}` });
  return real(get());
}

/** The `connect` Push of a unidirectional connection (bare, not wrapped in a Reply). */
function assertConnectPush(push, channels, what) {
  const desc = `${what}: ${JSON.stringify(push)}`;
  assert.ok(push.connect, `first push must be connect: ${desc}`);
  assert.equal(push.id, undefined, desc);
  assert.equal(push.push, undefined, `bare Push, not a Reply: ${desc}`);
  assert.equal(push.channel, undefined, desc);
  const c = push.connect;
  assert.equal(typeof c.client, 'string', desc);
  assert.ok(c.client.length > 0, desc);
  assert.equal(typeof c.version, 'string', desc);
  assert.equal(typeof c.session, 'string', `uni connect push carries a session: ${desc}`);
  assert.ok(c.session.length > 0, desc);
  assert.equal(c.node, undefined, `node is for emulation transports only: ${desc}`);
  assert.equal(c.ping, 25, desc);
  assert.notEqual(c.pong, true, `no pongs on unidirectional transports: ${desc}`);
  assert.deepEqual(Object.keys(c.subs || {}).sort(), [...channels].sort(), `server-side subs: ${desc}`);
}

function assertPubPush(push, channel, data, what) {
  assert.deepEqual(push, { channel, pub: { data } }, what);
}

/** An HS256 token signed with the wrong key. */
function badSignatureToken(user) {
  return signJwt({ sub: user, iat: nowSec(), exp: nowSec() + 3600 }, 'not-the-server-secret');
}

/**
 * Connect over `transport` with the raw ConnectRequest text and wait for the stream to end.
 * Resolves with { pushes, status, close, end } (`status`: HTTP status of the response or of
 * the failed EventSource request; `close`: uni_websocket close frame).
 */
async function uniConnectUntilEnd(server, transport, requestText, { asFirstMessage = false } = {}) {
  if (transport === 'uni_websocket') {
    const url = asFirstMessage
      ? `${wsBase(server)}/connection/uni_websocket`
      : `${wsBase(server)}/connection/uni_websocket?${cfConnectQuery(requestText)}`;
    const conn = await openUniWebSocket(url, asFirstMessage ? { firstMessage: requestText } : {});
    if (conn.rejected !== undefined) return { pushes: [], status: conn.rejected, close: null, frames: [] };
    let close;
    try {
      close = await withTimeout(conn.closed, STREAM_TIMEOUT, 'uni_websocket close');
    } finally {
      conn.ws.terminate();
    }
    return { pushes: conn.messages, status: 101, close, frames: conn.frames };
  }
  if (transport === 'uni_sse') {
    const es = openEventSource(`${httpBase(server)}/connection/uni_sse?${cfConnectQuery(requestText)}`);
    try {
      const end = await withTimeout(es.ended, STREAM_TIMEOUT, 'uni_sse end');
      return { pushes: es.messages, status: end.code === undefined ? 200 : end.code, close: null };
    } finally {
      es.es.close();
    }
  }
  const stream = await openHttpStream(`${httpBase(server)}/connection/uni_http_stream`, {
    headers: { 'Content-Type': 'application/json' },
    body: requestText,
  });
  try {
    const end = await withTimeout(stream.ended, STREAM_TIMEOUT, 'uni_http_stream end');
    assert.equal(end, 'end', 'uni_http_stream body ends cleanly');
    // A non-200 answer is not a Push stream: keep its body out of `pushes`.
    const pushes = stream.status === 200 ? stream.jsonLines() : [];
    return { pushes, status: stream.status, close: null, text: stream.text() };
  } finally {
    stream.abort();
  }
}

describe('unidirectional transports', () => {
  let server;
  before(async () => { server = await startServer(CONFIG); });
  after(async () => { if (server) await server.stop(); });

  test('uni_websocket: cf_connect query, token channels claim -> connect push, publication', tracked(() => server, async () => {
    const channel = `news:${uid('uws-')}`;
    const token = connToken(server, uid('uws-user-'), { channels: [channel] });
    const conn = await openUniWebSocket(`${wsBase(server)}/connection/uni_websocket?${cfConnectQuery({ token, name: 'raw-interop' })}`);
    assert.equal(conn.rejected, undefined, `upgrade refused: ${conn.rejected}`);
    let closedEarly = null;
    conn.closed.then(c => { closedEarly = c; });
    try {
      const [connect] = await waitPushes(() => conn.messages, 1, 'connect push', () => closedEarly);
      assertConnectPush(connect, [channel], 'uni_websocket connect push');

      const payload = { text: 'to uni_websocket', n: 1 };
      await api(server, 'publish', { channel, data: payload });
      const pushes = await waitPushes(() => conn.messages, 2, 'publication', () => closedEarly);
      assertPubPush(pushes[1], channel, payload, 'uni_websocket publication');
      // One Push per text frame (join_push_messages is off).
      for (const f of conn.frames) {
        assert.equal(f.binary, false, 'JSON only: text frames');
        assert.ok(!f.text.includes('\n'), `one push per frame: ${JSON.stringify(f.text)}`);
      }
      conn.ws.close(1000);
      await withTimeout(conn.closed, STREAM_TIMEOUT, 'clean close');
    } finally {
      conn.ws.terminate();
    }
  }));

  test('uni_websocket: ConnectRequest as the first message, subs keys; later messages are ignored', tracked(() => server, async () => {
    const channel = `news:${uid('uws1-')}`;
    const request = { token: connToken(server, uid('uws1-user-')), subs: { [channel]: {} } };
    const conn = await openUniWebSocket(`${wsBase(server)}/connection/uni_websocket`, { firstMessage: JSON.stringify(request) });
    assert.equal(conn.rejected, undefined, `upgrade refused: ${conn.rejected}`);
    let closedEarly = null;
    conn.closed.then(c => { closedEarly = c; });
    try {
      const [connect] = await waitPushes(() => conn.messages, 1, 'connect push', () => closedEarly);
      assertConnectPush(connect, [channel], 'uni_websocket connect push (first message)');

      // Anything the client sends later is read and ignored.
      conn.ws.send('this is not a command');
      conn.ws.send(JSON.stringify({ id: 1, subscribe: { channel: `news:${uid()}` } }));

      const payload = { text: 'after ignored messages' };
      await api(server, 'publish', { channel, data: payload });
      const pushes = await waitPushes(() => conn.messages, 2, 'publication', () => closedEarly);
      assertPubPush(pushes[1], channel, payload, 'uni_websocket publication (first message)');
      assert.equal(closedEarly, null, `connection closed: ${JSON.stringify(closedEarly)}`);
      assert.equal(real(conn.messages).length, 2, `nothing else: ${JSON.stringify(conn.messages)}`);
    } finally {
      conn.ws.terminate();
    }
  }));

  test('uni_sse: EventSource with cf_connect -> connect push and publication as data events', tracked(() => server, async () => {
    const channel = `news:${uid('usse-')}`;
    const token = connToken(server, uid('usse-user-'), { channels: [channel] });
    const es = openEventSource(`${httpBase(server)}/connection/uni_sse?${cfConnectQuery({ token })}`);
    let endedEarly = null;
    es.ended.then(e => { endedEarly = e; });
    try {
      const [connect] = await waitPushes(() => es.messages, 1, 'connect push', () => endedEarly);
      assert.ok(es.opened(), 'EventSource is open');
      assertConnectPush(connect, [channel], 'uni_sse connect push');

      const payload = { text: 'to uni_sse', list: [1, 2, 3] };
      await api(server, 'publish', { channel, data: payload });
      const pushes = await waitPushes(() => es.messages, 2, 'publication', () => endedEarly);
      assertPubPush(pushes[1], channel, payload, 'uni_sse publication');
      assert.equal(endedEarly, null, `EventSource failed: ${JSON.stringify(endedEarly)}`);
    } finally {
      es.es.close();
    }

    // POST with the ConnectRequest as the body works too (subs keys this time).
    const channel2 = `news:${uid('usse-post-')}`;
    const stream = await openHttpStream(`${httpBase(server)}/connection/uni_sse`, {
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ token: connToken(server, uid('usse-post-user-')), subs: { [channel2]: {} } }),
    });
    try {
      assert.equal(stream.status, 200);
      assert.match(stream.headers.get('content-type') || '', /^text\/event-stream/);
      const [connect] = await waitPushes(() => stream.sseData(), 1, 'connect push (POST)');
      assertConnectPush(connect, [channel2], 'uni_sse POST connect push');
      assert.ok(stream.text().startsWith('\r\n'), `uni_sse body starts with CRLF: ${JSON.stringify(stream.text().slice(0, 20))}`);
      await api(server, 'publish', { channel: channel2, data: { via: 'post' } });
      const pushes = await waitPushes(() => stream.sseData(), 2, 'publication (POST)');
      assertPubPush(pushes[1], channel2, { via: 'post' }, 'uni_sse POST publication');
    } finally {
      stream.abort();
    }
  }));

  test('uni_http_stream: POST ConnectRequest -> one Push JSON per line', tracked(() => server, async () => {
    const channel = `news:${uid('uhs-')}`;
    const stream = await openHttpStream(`${httpBase(server)}/connection/uni_http_stream`, {
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ token: connToken(server, uid('uhs-user-')), subs: { [channel]: {} }, name: 'raw-interop' }),
    });
    let endedEarly = null;
    stream.ended.then(e => { endedEarly = e; });
    try {
      assert.equal(stream.status, 200);
      const [connect] = await waitPushes(() => stream.jsonLines(), 1, 'connect push', () => endedEarly);
      assertConnectPush(connect, [channel], 'uni_http_stream connect push');

      const payloads = [{ n: 1 }, { n: 2, s: 'two' }];
      for (const data of payloads) await api(server, 'publish', { channel, data });
      const pushes = await waitPushes(() => stream.jsonLines(), 3, 'publications', () => endedEarly);
      assertPubPush(pushes[1], channel, payloads[0], 'uni_http_stream publication 1');
      assertPubPush(pushes[2], channel, payloads[1], 'uni_http_stream publication 2');
      assert.equal(endedEarly, null, `stream ended: ${endedEarly}`);
    } finally {
      stream.abort();
    }
  }));

  // ------------------------------------------------------------------------------------
  // Bad connect requests -> mapped disconnects (§2.6, §3.2)
  // ------------------------------------------------------------------------------------

  const BAD = [
    {
      name: 'expired token -> 3005',
      request: s => JSON.stringify({ token: connToken(s, uid('exp-'), { exp: nowSec() - 60 }) }),
      code: 3005,
      reason: 'connection expired',
    },
    {
      name: 'invalid token -> 3500',
      request: () => JSON.stringify({ token: badSignatureToken(uid('bad-')) }),
      code: 3500,
      reason: 'invalid token',
    },
    {
      name: 'garbage JSON -> 3501',
      request: () => '{"token": "abc", ',
      code: 3501,
      reason: 'bad request',
      // The HTTP transports refuse a malformed body up front, as Centrifugo does.
      httpStatus: 400,
    },
  ];

  for (const transport of TRANSPORTS) {
    for (const bad of BAD) {
      test(`${transport}: ${bad.name}`, tracked(() => server, async () => {
        const variants = transport === 'uni_websocket' ? [false, true] : [false];
        for (const asFirstMessage of variants) {
          const r = await uniConnectUntilEnd(server, transport, bad.request(server), { asFirstMessage });
          const desc = `${transport}${asFirstMessage ? ' (first message)' : ''}: ` +
            JSON.stringify({ status: r.status, close: r.close, pushes: r.pushes });
          const pushes = real(r.pushes);
          assert.ok(!pushes.some(p => p.connect), `no connect push: ${desc}`);
          if (bad.httpStatus && transport !== 'uni_websocket') {
            assert.equal(r.status, bad.httpStatus, desc);
            assert.deepEqual(pushes, [], desc);
            continue;
          }
          if (transport === 'uni_websocket') {
            assert.equal(r.status, 101, desc);
            assert.ok(r.close, desc);
            assert.equal(r.close.code, bad.code, `close code: ${desc}`);
            assert.equal(r.close.reason, bad.reason, `close reason: ${desc}`);
          } else {
            assert.equal(r.status, 200, `HTTP status: ${desc}`);
          }
          assert.deepEqual(pushes, [{ disconnect: { code: bad.code, reason: bad.reason } }], `disconnect push: ${desc}`);
        }
        await server.assertAlive(`${transport}: ${bad.name}`);
      }));
    }
  }

  // ------------------------------------------------------------------------------------
  // API disconnect -> disconnect push, then the stream ends
  // ------------------------------------------------------------------------------------

  for (const transport of TRANSPORTS) {
    test(`${transport}: API disconnect 4001 -> disconnect push, stream ends`, tracked(() => server, async () => {
      const user = uid(`${transport}-disc-`);
      const channel = `news:${uid('disc-')}`;
      const request = { token: connToken(server, user, { channels: [channel] }) };
      let getPushes;
      let ended;
      let cleanup;
      if (transport === 'uni_websocket') {
        const conn = await openUniWebSocket(`${wsBase(server)}/connection/uni_websocket?${cfConnectQuery(request)}`);
        assert.equal(conn.rejected, undefined, `upgrade refused: ${conn.rejected}`);
        getPushes = () => conn.messages;
        ended = conn.closed;
        cleanup = () => conn.ws.terminate();
      } else if (transport === 'uni_sse') {
        const es = openEventSource(`${httpBase(server)}/connection/uni_sse?${cfConnectQuery(request)}`);
        getPushes = () => es.messages;
        ended = es.ended;
        cleanup = () => es.es.close();
      } else {
        const stream = await openHttpStream(`${httpBase(server)}/connection/uni_http_stream`, {
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify(request),
        });
        assert.equal(stream.status, 200);
        getPushes = () => stream.jsonLines();
        ended = stream.ended;
        cleanup = () => stream.abort();
      }
      try {
        const [connect] = await waitPushes(getPushes, 1, 'connect push');
        assertConnectPush(connect, [channel], `${transport} connect push`);

        await api(server, 'disconnect', { user, disconnect: { code: 4001, reason: 'go away for now' } });
        const end = await withTimeout(ended, STREAM_TIMEOUT, `${transport} end after the API disconnect`);
        const pushes = real(getPushes());
        assert.deepEqual(pushes.slice(1), [{ disconnect: { code: 4001, reason: 'go away for now' } }],
          `${transport}: ${JSON.stringify({ end, pushes })}`);
        if (transport === 'uni_websocket') {
          assert.deepEqual(end, { code: 4001, reason: 'go away for now' }, 'close frame');
        } else if (transport === 'uni_sse') {
          assert.equal(end.code, undefined, `the stream ended (not a failed request): ${JSON.stringify(end)}`);
        } else {
          assert.equal(end, 'end');
        }
      } finally {
        cleanup();
      }
    }));
  }
});
