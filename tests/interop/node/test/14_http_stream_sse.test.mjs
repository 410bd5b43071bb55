// Scenario 14: bidirectional emulation (spec §2.4). centrifuge-js over `http_stream` (JSON and
// Protobuf) and over `sse` (JSON): connect, subscribe, API publication, client publish (sent
// through POST /emulation), presence, history, and recovery after an API disconnect with a
// reconnect code. Then bad input against /connection/http_stream, /connection/sse and
// /emulation while two well-behaved emulation clients stay subscribed.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';

import {
  PROTOCOLS, NAMESPACES, startServer, tracked, connectClient, subscribeAndWait,
  connToken, api, waitForEvent, waitForCount, waitFor, collect, closeAll, uid,
} from '../harness.mjs';
import {
  newEmulationClient, closeEmulationClients, rawHttp, openHttpStream, httpBase,
} from '../http_transports.mjs';

const ALLOWED_ORIGIN = 'http://allowed.example';
const OTHER_ORIGIN = 'http://not-allowed.example';
// emulation.max_request_body_size (and the http_stream default): 64 KiB.
const BODY_LIMIT = 65536;

const [JSON_PROTO, PB_PROTO] = PROTOCOLS;

// `chat` with recovery forced on, so that every subscription is recoverable.
const NAMESPACES_14 = NAMESPACES.map(ns => (ns.name === 'chat' ? { ...ns, force_recovery: true } : ns));

const CONFIG = {
  http_stream: { enabled: true },
  sse: { enabled: true },
  emulation: { max_request_body_size: BODY_LIMIT },
  client: { allowed_origins: [ALLOWED_ORIGIN] },
  channel: { namespaces: NAMESPACES_14 },
};

const VARIANTS = [
  { proto: JSON_PROTO, transport: 'http_stream' },
  { proto: JSON_PROTO, transport: 'sse' },
  { proto: PB_PROTO, transport: 'http_stream' },
];

async function publishSeq(server, channel, from, n) {
  const sent = [];
  for (let i = 0; i < n; i++) {
    const data = { seq: from + i, from: 'api' };
    const r = await api(server, 'publish', { channel, data });
    assert.equal(r.offset, from + i, `publish offset: ${JSON.stringify(r)}`);
    sent.push(data);
  }
  return sent;
}

describe('bidirectional emulation with centrifuge-js', () => {
  let server;
  before(async () => { server = await startServer(CONFIG); });
  after(async () => {
    closeEmulationClients();
    if (server) await server.stop();
  });

  for (const { proto, transport } of VARIANTS) {
    test(`connect, subscribe, publish both ways, presence, history, recovery [${transport}, ${proto.name}]`, tracked(() => server, async () => {
      const user = uid('emu-');
      const client = newEmulationClient(server, proto, transport, { token: connToken(server, user) });
      try {
        const connected = await connectClient(client);
        assert.equal(connected.transport, transport, `connected ctx: ${JSON.stringify(connected)}`);
        assert.equal(typeof connected.client, 'string');
        assert.ok(connected.client.length > 0, 'connected ctx carries the client id');
        assert.equal(client.state, 'connected');

        const channel = `chat:${uid('room-')}-${transport}-${proto.name}`;
        const sub = client.newSubscription(channel);
        const pubs = collect(sub, 'publication');
        // The subscribe command itself travels through POST /emulation.
        const subscribed = await subscribeAndWait(sub);
        assert.equal(subscribed.channel, channel);
        assert.equal(subscribed.recoverable, true, `subscribed ctx: ${JSON.stringify(subscribed)}`);
        assert.ok(subscribed.streamPosition, 'recoverable subscription has a stream position');
        // A channel nobody published to has no epoch yet (reading creates none); the first
        // publication starts it and names it to subscribers.
        assert.equal(subscribed.streamPosition.epoch, '', 'no epoch before the first publication');

        // 1. A publication from the HTTP API arrives on the stream.
        const first = await publishSeq(server, channel, 1, 1);
        await waitForCount(pubs, 1, { what: 'API publication' });
        assert.deepEqual(proto.decode(pubs[0].data), first[0]);
        assert.equal(pubs[0].offset, 1);
        assert.equal(pubs[0].info, undefined, 'API publications carry no ClientInfo');
        const epoch = (await api(server, 'history', { channel, limit: 0 })).epoch;
        assert.ok(epoch, 'the first publication started the epoch');

        // 2. Client publish (POST /emulation), echoed back on the stream with ClientInfo.
        const own = { seq: 2, from: 'client', text: `via ${transport}` };
        await sub.publish(proto.encode(own));
        await waitForCount(pubs, 2, { what: 'own client publication' });
        assert.deepEqual(proto.decode(pubs[1].data), own);
        assert.equal(pubs[1].offset, 2);
        assert.ok(pubs[1].info, 'client publication carries ClientInfo');
        assert.equal(pubs[1].info.client, connected.client);
        assert.equal(pubs[1].info.user, user);

        // 3. Presence and presence stats.
        let presence;
        await waitFor(async () => {
          presence = await sub.presence();
          return Object.keys(presence.clients).length === 1;
        }, { timeoutMs: 3000, what: 'presence with 1 client' });
        assert.deepEqual(Object.keys(presence.clients), [connected.client]);
        assert.equal(presence.clients[connected.client].client, connected.client);
        assert.equal(presence.clients[connected.client].user, user);
        assert.deepEqual(await sub.presenceStats(), { numClients: 1, numUsers: 1 });

        // 4. History holds both publications.
        const history = await sub.history({ limit: 10 });
        assert.equal(history.offset, 2, `history: ${JSON.stringify(history)}`);
        assert.equal(history.epoch, epoch);
        assert.deepEqual(history.publications.map(p => p.offset), [1, 2]);
        assert.deepEqual(history.publications.map(p => proto.decode(p.data)), [first[0], own]);

        // 5. The server disconnects the user with a reconnect code (4001) while we keep
        // publishing: the SDK reconnects over the same transport and recovers exactly
        // the publications it missed.
        const connecting = waitForEvent(client, 'connecting', { timeoutMs: 5000 });
        const reconnected = waitForEvent(client, 'connected', { timeoutMs: 8000 });
        const resubscribed = waitForEvent(sub, 'subscribed', { timeoutMs: 8000 });
        const countBefore = pubs.length;
        await api(server, 'disconnect', { user, disconnect: { code: 4001, reason: 'come back' } });
        const c = await connecting;
        assert.equal(c.code, 4001, `connecting ctx: ${JSON.stringify(c)}`);
        assert.equal(c.reason, 'come back');
        const missed = await publishSeq(server, channel, 3, 3);
        const again = await reconnected;
        assert.equal(again.transport, transport, 'reconnected over the same transport');
        assert.notEqual(again.client, connected.client, 'a new connection');
        const ctx = await resubscribed;
        assert.equal(ctx.wasRecovering, true, `resubscribed ctx: ${JSON.stringify(ctx)}`);
        assert.equal(ctx.recovered, true, `resubscribed ctx: ${JSON.stringify(ctx)}`);
        assert.equal(ctx.streamPosition.epoch, epoch);

        const last = await publishSeq(server, channel, 6, 1);
        await waitForCount(pubs, 6, { what: 'recovered and live publications' });
        assert.equal(countBefore, 2);
        assert.deepEqual(pubs.map(p => p.offset), [1, 2, 3, 4, 5, 6], 'no gap, no duplicate');
        assert.deepEqual(pubs.slice(2).map(p => proto.decode(p.data)), [...missed, ...last]);
        assert.equal(client.state, 'connected');
        assert.equal(sub.state, 'subscribed');
      } finally {
        closeAll(client);
      }
    }));
  }
});

// ---------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------

/** Open a raw JSON http_stream session; returns the stream and the connect reply. */
async function rawHttpStreamSession(server, user) {
  const stream = await openHttpStream(`${httpBase(server)}/connection/http_stream`, {
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ id: 1, connect: { token: connToken(server, user), name: 'raw-interop' } }),
  });
  assert.equal(stream.status, 200, 'http_stream answers 200');
  await waitFor(() => stream.jsonLines().some(m => m.id === 1), { what: 'connect reply on the raw http_stream' });
  const reply = stream.jsonLines().find(m => m.id === 1);
  return { stream, reply };
}

function emulate(server, body, contentType = 'application/json') {
  return rawHttp(`${httpBase(server)}/emulation`, {
    method: 'POST',
    headers: { 'Content-Type': contentType },
    body,
  });
}

/** EmulationRequest JSON: `data` is a JSON string holding the command text. */
function emulationBody(session, node, commands) {
  return JSON.stringify({ session, node, data: commands.map(c => JSON.stringify(c)).join('\n') });
}

describe('emulation endpoints: bad input', () => {
  let server;
  before(async () => { server = await startServer(CONFIG); });
  after(async () => {
    closeEmulationClients();
    if (server) await server.stop();
  });

  test('bad requests get HTTP errors; sessions and well-behaved clients are unaffected', tracked(() => server, async () => {
    const base = httpBase(server);
    const trouble = [];
    const observers = [];
    const streams = [];
    try {
      // Two well-behaved clients, subscribed for the whole test.
      const channel = `chat:${uid('observed-')}`;
      const observerSubs = [];
      for (const [proto, transport] of [[JSON_PROTO, 'sse'], [PB_PROTO, 'http_stream']]) {
        const client = newEmulationClient(server, proto, transport, { token: connToken(server, uid('observer-')) });
        observers.push(client);
        const ctx = await connectClient(client);
        assert.equal(ctx.transport, transport);
        const sub = client.newSubscription(channel);
        await subscribeAndWait(sub);
        observerSubs.push({ proto, transport, client, sub });
        client.on('connecting', c => trouble.push([transport, 'connecting', c]));
        client.on('disconnected', c => trouble.push([transport, 'disconnected', c]));
        sub.on('subscribing', c => trouble.push([transport, 'subscribing', c]));
        sub.on('unsubscribed', c => trouble.push([transport, 'unsubscribed', c]));
      }

      // A raw JSON http_stream session: response headers and the emulation fields.
      const raw = await rawHttpStreamSession(server, uid('raw-'));
      streams.push(raw.stream);
      const h = raw.stream.headers;
      assert.equal(h.get('x-accel-buffering'), 'no');
      assert.equal(h.get('cache-control'), 'private, no-cache, no-store, must-revalidate, max-age=0');
      assert.equal(h.get('pragma'), 'no-cache');
      assert.equal(raw.reply.error, undefined, `connect reply: ${JSON.stringify(raw.reply)}`);
      const { session, node } = raw.reply.connect;
      assert.equal(typeof session, 'string', `connect reply: ${JSON.stringify(raw.reply)}`);
      assert.ok(session.length > 0, 'emulation connect result carries a session');
      assert.equal(typeof node, 'string', `connect reply: ${JSON.stringify(raw.reply)}`);
      assert.ok(node.length > 0, 'emulation connect result carries the node');
      assert.equal(raw.reply.connect.ping, 25);
      assert.equal(raw.reply.connect.pong, true);

      // A well-formed emulation request: 204, the reply comes back on the stream.
      const rawChannel = `chat:${uid('raw-room-')}`;
      const okReq = await emulate(server, emulationBody(session, node, [{ id: 2, subscribe: { channel: rawChannel } }]));
      assert.equal(okReq.status, 204, `emulation: ${okReq.status} ${okReq.text}`);
      await waitFor(() => raw.stream.jsonLines().some(m => m.id === 2), { what: 'subscribe reply via emulation' });
      const subReply = raw.stream.jsonLines().find(m => m.id === 2);
      assert.ok(subReply.subscribe, `subscribe reply: ${JSON.stringify(subReply)}`);

      // 1. Emulation body over 64 KiB -> 413 (for a live session: the size alone decides).
      const big = await emulate(server, emulationBody(session, node,
        [{ id: 3, publish: { channel: rawChannel, data: { filler: 'x'.repeat(BODY_LIMIT + 4096) } } }]));
      assert.equal(big.status, 413, `oversized emulation body: ${big.status} ${big.text}`);

      // 2. Unknown node -> 404. An unknown session on this node is refused too (404), or
      // accepted and dropped (204: Centrifugo, and what centrifuge-js expects for a session
      // that is gone) - never routed anywhere.
      const unknownNode = await emulate(server, emulationBody(randomUUID(), 'no-such-node-' + uid(), [{ id: 1, presence: { channel: rawChannel } }]));
      assert.equal(unknownNode.status, 404, `unknown node: ${unknownNode.status} ${unknownNode.text}`);
      const unknownSession = await emulate(server, emulationBody(randomUUID(), node, [{ id: 4, presence: { channel: rawChannel } }]));
      assert.ok([204, 404].includes(unknownSession.status), `unknown session: ${unknownSession.status} ${unknownSession.text}`);
      if (unknownSession.status !== 404) {
        console.log(`# note: emulation request for an unknown session on the server's node -> ${unknownSession.status}`);
      }

      // 3. Malformed emulation bodies -> 400.
      const malformed = await emulate(server, '{"session": "' + session + '", "node": ');
      assert.equal(malformed.status, 400, `malformed emulation body: ${malformed.status} ${malformed.text}`);
      const notJson = await emulate(server, 'this is not json');
      assert.equal(notJson.status, 400, `non-JSON emulation body: ${notJson.status} ${notJson.text}`);
      const badPb = await emulate(server, Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]), 'application/octet-stream');
      assert.equal(badPb.status, 400, `malformed protobuf emulation body: ${badPb.status} ${badPb.text}`);

      // 4. Wrong methods -> 405.
      const getEmu = await rawHttp(`${base}/emulation`, { method: 'GET' });
      assert.equal(getEmu.status, 405, `GET /emulation: ${getEmu.status}`);
      const getStream = await rawHttp(`${base}/connection/http_stream`, { method: 'GET' });
      assert.equal(getStream.status, 405, `GET /connection/http_stream: ${getStream.status}`);

      // 5. GET /connection/sse without cf_connect -> 400.
      const noConnect = await rawHttp(`${base}/connection/sse`, { method: 'GET' });
      assert.equal(noConnect.status, 400, `GET /connection/sse without cf_connect: ${noConnect.status} ${noConnect.text}`);

      // 6. http_stream connect body over 64 KiB -> 413.
      const bigConnect = await rawHttp(`${base}/connection/http_stream`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ id: 1, connect: { token: 'x', data: { filler: 'y'.repeat(BODY_LIMIT + 4096) } } }),
      });
      assert.equal(bigConnect.status, 413, `oversized http_stream body: ${bigConnect.status}`);

      // 7. A malformed initial command on http_stream: the stream carries the 3501
      // disconnect push and ends.
      const garbage = await openHttpStream(`${base}/connection/http_stream`, {
        headers: { 'Content-Type': 'application/json' },
        body: '{"id":1,"connect":',
      });
      streams.push(garbage);
      assert.equal(garbage.status, 200, `http_stream with a malformed command: ${garbage.status}`);
      const garbageEnd = await Promise.race([garbage.ended, new Promise(r => setTimeout(() => r('timeout'), 5000))]);
      assert.equal(garbageEnd, 'end', `the stream ends after a malformed command (${JSON.stringify(garbage.text())})`);
      assert.deepEqual(garbage.jsonLines(), [{ push: { disconnect: { code: 3501, reason: 'bad request' } } }]);

      // 8. CORS preflight from an allowed origin -> 204 with Access-Control-Allow-Origin.
      // The other CORS headers are collected and checked at the end, after the rest.
      const corsProblems = [];
      const expectHeader = (what, headers, name, test) => {
        const v = headers[name];
        if (!test(v)) corsProblems.push(`${what}: ${name} = ${JSON.stringify(v)}`);
      };
      for (const path of ['/connection/http_stream', '/emulation']) {
        const pre = await rawHttp(`${base}${path}`, {
          method: 'OPTIONS',
          headers: {
            Origin: ALLOWED_ORIGIN,
            'Access-Control-Request-Method': 'POST',
            'Access-Control-Request-Headers': 'content-type',
          },
        });
        const desc = `OPTIONS ${path}: ${pre.status} ${JSON.stringify(pre.headers)}`;
        assert.equal(pre.status, 204, desc);
        assert.equal(pre.headers['access-control-allow-origin'], ALLOWED_ORIGIN, desc);
        const what = `OPTIONS ${path}`;
        expectHeader(what, pre.headers, 'access-control-allow-credentials', v => v === 'true');
        expectHeader(what, pre.headers, 'access-control-allow-headers', v => /content-type/i.test(String(v || '')));
        if (path === '/connection/http_stream') {
          expectHeader(what, pre.headers, 'access-control-max-age', v => v === '300');
          expectHeader(what, pre.headers, 'access-control-allow-methods', v => /POST/.test(String(v || '')));
        }
        // A disallowed origin gets no Access-Control-Allow-Origin.
        const other = await rawHttp(`${base}${path}`, {
          method: 'OPTIONS',
          headers: { Origin: OTHER_ORIGIN, 'Access-Control-Request-Method': 'POST' },
        });
        assert.equal(other.headers['access-control-allow-origin'], undefined,
          `OPTIONS ${path} from ${OTHER_ORIGIN}: ${other.status} ${JSON.stringify(other.headers)}`);
      }
      // The actual cross-origin requests carry the CORS headers too (a browser needs them
      // on the response, not only on the preflight).
      const corsEmu = await rawHttp(`${base}/emulation`, {
        method: 'POST',
        headers: { Origin: ALLOWED_ORIGIN, 'Content-Type': 'application/json' },
        body: emulationBody(session, node, [{ id: 6, presence_stats: { channel: rawChannel } }]),
      });
      assert.equal(corsEmu.status, 204, `cross-origin emulation: ${corsEmu.status} ${JSON.stringify(corsEmu.headers)}`);
      expectHeader('POST /emulation', corsEmu.headers, 'access-control-allow-origin', v => v === ALLOWED_ORIGIN);
      expectHeader('POST /emulation', corsEmu.headers, 'access-control-allow-credentials', v => v === 'true');
      await waitFor(() => raw.stream.jsonLines().some(m => m.id === 6), { what: 'presence_stats reply (cross-origin emulation)' });
      const corsStream = await openHttpStream(`${base}/connection/http_stream`, {
        headers: { Origin: ALLOWED_ORIGIN, 'Content-Type': 'application/json' },
        body: JSON.stringify({ id: 1, connect: { token: connToken(server, uid('cors-')) } }),
      });
      streams.push(corsStream);
      assert.equal(corsStream.status, 200, 'cross-origin http_stream from an allowed origin');
      const corsHeaders = Object.fromEntries(corsStream.headers.entries());
      expectHeader('POST /connection/http_stream', corsHeaders, 'access-control-allow-origin', v => v === ALLOWED_ORIGIN);
      expectHeader('POST /connection/http_stream', corsHeaders, 'access-control-allow-credentials', v => v === 'true');
      await waitFor(() => corsStream.jsonLines().some(m => m.id === 1), { what: 'connect reply (cross-origin http_stream)' });
      assert.ok(corsStream.jsonLines().find(m => m.id === 1).connect);
      corsStream.abort();

      // 9. The raw session survived all of it: one more command through /emulation.
      const stillOk = await emulate(server, emulationBody(session, node, [{ id: 5, presence: { channel: rawChannel } }]));
      assert.equal(stillOk.status, 204, `emulation after bad input: ${stillOk.status}`);
      await waitFor(() => raw.stream.jsonLines().some(m => m.id === 5), { what: 'presence reply via emulation' });
      const presenceReply = raw.stream.jsonLines().find(m => m.id === 5);
      assert.ok(presenceReply.presence, `presence reply: ${JSON.stringify(presenceReply)}`);
      assert.ok(presenceReply.presence.presence[raw.reply.connect.client], `presence reply: ${JSON.stringify(presenceReply)}`);
      assert.deepEqual(raw.stream.jsonLines().filter(m => m.id === 3 || m.id === 4), [],
        'nothing from the rejected requests reached the session');

      // 10. A raw bidirectional SSE session: event-stream framing of the replies.
      const sse = await openHttpStream(`${base}/connection/sse?cf_connect=${encodeURIComponent(JSON.stringify({
        id: 1, connect: { token: connToken(server, uid('raw-sse-')), name: 'raw-interop' },
      }))}`, { method: 'GET' });
      streams.push(sse);
      assert.equal(sse.status, 200);
      assert.match(sse.headers.get('content-type') || '', /^text\/event-stream/);
      await waitFor(() => sse.sseData().some(m => m.id === 1), { what: 'connect reply as an SSE event' });
      assert.ok(sse.text().startsWith('\r\n'), `SSE body starts with CRLF: ${JSON.stringify(sse.text().slice(0, 40))}`);
      const sseReply = sse.sseData().find(m => m.id === 1);
      assert.ok(sseReply.connect, `SSE connect reply: ${JSON.stringify(sseReply)}`);
      assert.ok(sseReply.connect.session && sseReply.connect.node, `SSE connect reply: ${JSON.stringify(sseReply)}`);

      // The observers never noticed anything and still receive publications.
      const got = observerSubs.map(o => waitForEvent(o.sub, 'publication', { timeoutMs: 5000 }));
      await api(server, 'publish', { channel, data: { after: 'bad input' } });
      const received = await Promise.all(got);
      for (let i = 0; i < observerSubs.length; i++) {
        assert.deepEqual(observerSubs[i].proto.decode(received[i].data), { after: 'bad input' }, observerSubs[i].transport);
        assert.equal(observerSubs[i].client.state, 'connected');
        assert.equal(observerSubs[i].sub.state, 'subscribed');
      }
      assert.deepEqual(trouble, []);

      await server.assertAlive('after emulation bad input');

      // Spec §2.2: CORS headers `Access-Control-Allow-Origin: <origin>` and
      // `Access-Control-Allow-Credentials: true`; §2.4: http_stream preflight with
      // `Access-Control-Max-Age: 300` and `Access-Control-Allow-Methods: POST, OPTIONS`.
      assert.deepEqual(corsProblems, [], 'CORS headers');
    } finally {
      for (const s of streams) s.abort();
      closeAll(...observers);
    }
  }));
});
