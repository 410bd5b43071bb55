// Scenario 23: the proxy to an application backend (Centrifugo's proxy feature), once with
// the HTTP backend and once with the gRPC one (tests/interop/backends), both answering the
// same way. No client has a token: the connect proxy decides who connects and as whom;
// channel `proxied:*` subscribe / publish / sub refresh and every RPC go to named proxies.
// The backend's records show what Spinwire sent; the SDK's events show what a user sees.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  PROTOCOLS, startServer, tracked, connectClient, subscribeAndWait, waitForEvent,
  waitForCount, collect, closeAll, uid, delay,
} from '../harness.mjs';
import {
  startBackend, grpcSkipReason, backendCall, proxyConfig, proxyClient, websocketWithHeaders,
  expectConnectDisconnected, expectCallError, stateEvents,
} from '../proxy.mjs';

const JSON_PROTO = PROTOCOLS.find(p => p.name === 'json');
const EMULATED = { 'X-Emulated-Ok': 'yes', 'X-Real-Header': 'forged', 'X-Untrusted': 'evil' };

for (const kind of ['http', 'grpc']) {
  describe(`proxy to a ${kind} backend`, { skip: kind === 'grpc' && grpcSkipReason() }, () => {
    let backend;
    let server;
    before(async () => {
      backend = await startBackend(kind);
      server = await startServer(proxyConfig(backend));
    });
    after(async () => {
      if (server && server.failed && backend) console.error(`${kind} backend stderr:\n${backend.log}`);
      if (server) await server.stop();
      if (backend) await backend.stop();
    });

    /** Connect as `data` says and return [client, connected ctx]. */
    async function connectAs(proto, data, options) {
      const client = proxyClient(server, proto, data, options);
      return [client, await connectClient(client)];
    }

    const connectCall = ctx => backendCall(backend, 'connect', c => c.body.client === ctx.client);

    for (const proto of PROTOCOLS) {
      test(`connect: the backend names the user; its data, subscribe and rpc answers reach the client [${proto.name}]`, tracked(() => server, async () => {
        const [client, connected] = await connectAs(proto, { user: 'alice' });
        try {
          assert.deepEqual(proto.decode(connected.data), { welcome: 'alice' });
          const connect = await connectCall(connected);
          assert.deepEqual(connect.body.data, { user: 'alice' }, 'connect data reaches the backend as JSON');
          assert.equal(connect.body.transport, 'websocket');
          assert.equal(connect.body.protocol, proto.name);
          assert.equal(connect.body.encoding, 'json');
          assert.equal(connect.body.name, 'spinwire-interop-node', 'the client name from the connect command');

          const channel = `proxied:allowed-${uid()}`;
          const subscribed = await subscribeAndWait(client.newSubscription(channel));
          assert.deepEqual(proto.decode(subscribed.data), { hello: channel });
          const sub = await backendCall(backend, 'subscribe', c => c.body.channel === channel);
          // The connection really is alice's, with the meta the connect proxy attached
          // (include_connection_meta on the subscribe proxy).
          assert.equal(sub.body.user, 'alice');
          assert.equal(sub.body.client, connected.client);
          assert.deepEqual(sub.body.meta, { role: 'tester' });

          const reply = await client.rpc('echo', proto.encode({ n: 1 }));
          assert.deepEqual(proto.decode(reply.data), { echo: { n: 1 } });
          const rpc = await backendCall(backend, 'rpc', c => c.body.client === connected.client);
          assert.deepEqual({ user: rpc.body.user, method: rpc.body.method }, { user: 'alice', method: 'echo' });
        } finally {
          closeAll(client);
        }
      }));

      test(`publish: subscribers receive the backend's rewrite; a rejected publish fails with 4003 [${proto.name}]`, tracked(() => server, async () => {
        const [publisher, pubCtx] = await connectAs(proto, { user: 'alice' });
        const [watcher] = await connectAs(proto, { user: 'watcher' });
        try {
          const channel = `proxied:allowed-${uid()}`;
          const sub = watcher.newSubscription(channel);
          const pubs = collect(sub, 'publication');
          await subscribeAndWait(sub);

          await publisher.publish(channel, proto.encode({ text: 'hi' }));
          const [pub] = await waitForCount(pubs, 1, { what: 'publications' });
          assert.deepEqual(proto.decode(pub.data), { text: 'hi', rewritten: true });
          const call = await backendCall(backend, 'publish', c => c.body.channel === channel);
          assert.deepEqual(call.body.data, { text: 'hi' }, 'the backend got the original data');
          assert.equal(call.body.user, 'alice');
          assert.equal(call.body.client, pubCtx.client);

          await expectCallError(publisher.publish(channel, proto.encode({ reject: true })), 4003, 'publish rejected');
          // Give a wrongly delivered publication the time to arrive before counting.
          await delay(300);
          assert.equal(pubs.length, 1, 'the rejected publication reached no subscriber');
        } finally {
          closeAll(publisher, watcher);
        }
      }));
    }

    test('subscribe: denied -> unsubscribed 103; kick -> the connection is closed with 4502', tracked(() => server, async () => {
      const [client] = await connectAs(JSON_PROTO, { user: 'alice' });
      try {
        const denied = client.newSubscription(`proxied:denied-${uid()}`);
        const unsubscribed = waitForEvent(denied, 'unsubscribed');
        denied.subscribe();
        const ctx = await unsubscribed;
        assert.deepEqual({ code: ctx.code, reason: ctx.reason }, { code: 103, reason: 'permission denied' });
        assert.equal(client.state, 'connected', 'a refused subscription leaves the connection alone');

        const disconnected = waitForEvent(client, 'disconnected');
        client.newSubscription(`proxied:kick-${uid()}`).subscribe();
        const d = await disconnected;
        assert.deepEqual({ code: d.code, reason: d.reason }, { code: 4502, reason: 'subscribe kick' });
      } finally {
        closeAll(client);
      }
    }));

    test('rpc: fail -> error 4500; kick -> closed with 4444, and the SDK reconnects', tracked(() => server, async () => {
      const [client, connected] = await connectAs(JSON_PROTO, { user: 'alice' });
      try {
        await expectCallError(client.rpc('fail', {}), 4500, 'rpc failed');
        assert.equal(client.state, 'connected');

        // 4444 is in the reconnect range (4000-4499): 'connecting', then connected again.
        const connecting = waitForEvent(client, 'connecting');
        const reconnected = waitForEvent(client, 'connected', { timeoutMs: 8000 });
        const kicked = client.rpc('kick', {}).then(() => 'resolved', () => 'rejected');
        const c = await connecting;
        assert.deepEqual({ code: c.code, reason: c.reason }, { code: 4444, reason: 'kicked' });
        assert.equal(await kicked, 'rejected', 'the rpc that got the connection kicked has no result');
        const again = await reconnected;
        assert.notEqual(again.client, connected.client, 'a new connection');
      } finally {
        closeAll(client);
      }
    }));

    const refusals = [
      { mode: 'error', code: 4001, reason: 'backend refused' },
      { mode: 'disconnect', code: 4501, reason: 'backend disconnect' },
      // No result and no token: nobody to connect as (anonymous connects are off).
      { mode: 'no_result', code: 3501, reason: 'bad request' },
    ];
    for (const r of refusals) {
      test(`connect: backend ${r.mode} -> disconnected ${r.code}`, tracked(() => server, async () => {
        const client = proxyClient(server, JSON_PROTO, { mode: r.mode });
        try {
          await expectConnectDisconnected(client, r.code, r.reason);
        } finally {
          closeAll(client);
        }
      }));
    }

    test('refresh: at expire_at the server asks the refresh proxy, which extends the connection', tracked(() => server, async () => {
      const [client, connected] = await connectAs(JSON_PROTO, { user: 'bob', ttl: 2 });
      const since = Date.now();
      const events = stateEvents(client);
      try {
        const refresh = await backendCall(backend, 'refresh', c => c.body.client === connected.client, { timeoutMs: 5000 });
        assert.equal(refresh.body.user, 'bob');
        // Well past the first expiry (2 s): the refresh answer (+60 s) kept it open.
        await delay(Math.max(0, since + 4500 - Date.now()));
        assert.equal(client.state, 'connected');
        assert.deepEqual(events, [], 'no disconnect, no reconnect');
      } finally {
        closeAll(client);
      }
    }));

    test('refresh: a backend answering expired closes the connection with 3005 at expiry', tracked(() => server, async () => {
      const [client, connected] = await connectAs(JSON_PROTO, { user: 'expire-me', ttl: 2 });
      const since = Date.now();
      try {
        const c = await waitForEvent(client, 'connecting', { timeoutMs: 6000 });
        const elapsed = Date.now() - since;
        assert.deepEqual({ code: c.code, reason: c.reason }, { code: 3005, reason: 'connection expired' });
        // expire_at is whole seconds (now+2): 1-2 s after connecting, plus the refresh call.
        assert.ok(elapsed >= 500 && elapsed <= 4500, `closed after ${elapsed} ms`);
        const refresh = await backendCall(backend, 'refresh', x => x.body.client === connected.client);
        assert.equal(refresh.body.user, 'expire-me');
      } finally {
        closeAll(client);
      }
    }));

    test('sub refresh: a subscription with expire_at is refreshed by the proxy and stays', tracked(() => server, async () => {
      const [client, connected] = await connectAs(JSON_PROTO, { user: 'alice' });
      try {
        const channel = `proxied:short-${uid()}`;
        const sub = client.newSubscription(channel);
        await subscribeAndWait(sub);
        const since = Date.now();
        const changes = [];
        for (const ev of ['subscribing', 'unsubscribed', 'error']) sub.on(ev, ctx => changes.push([ev, ctx]));

        const call = await backendCall(backend, 'sub_refresh', c => c.body.channel === channel, { timeoutMs: 5000 });
        assert.equal(call.body.user, 'alice');
        assert.equal(call.body.client, connected.client);
        // Past the original expiry (2 s) and a second after the refresh: still subscribed.
        await delay(Math.max(0, since + 3500 - Date.now(), call.at + 1000 - Date.now()));
        assert.equal(sub.state, 'subscribed');
        assert.deepEqual(changes, []);
        assert.equal(client.state, 'connected');
      } finally {
        closeAll(client);
      }
    }));

    // GHSA-9468-v6mj-fppw: headers emulation (in the connect frame) is client-controlled.
    // Only names in emulated_headers come from it; http_headers come from the real request.
    test('headers: emulated ones only when in emulated_headers, never a forged http_headers one', tracked(() => server, async () => {
      const [client, connected] = await connectAs(JSON_PROTO, { user: 'emulated' }, { headers: EMULATED });
      try {
        const { headers } = await connectCall(connected);
        assert.equal(headers['x-emulated-ok'], 'yes');
        assert.equal(headers['x-real-header'], undefined, 'an emulated header must not fill an http_headers name');
        assert.equal(headers['x-untrusted'], undefined, 'an emulated header not in emulated_headers');
        if (kind === 'http') assert.equal(headers['x-static'], 's', 'http.static_headers');
      } finally {
        closeAll(client);
      }
    }));

    test('headers: a real upgrade header in http_headers is forwarded, other real ones are not', tracked(() => server, async () => {
      const websocket = websocketWithHeaders({ 'X-Real-Header': 'real', 'X-Untrusted': 'evil-real' });
      const [client, connected] = await connectAs(JSON_PROTO, { user: 'real' }, { headers: EMULATED, websocket });
      try {
        const { headers } = await connectCall(connected);
        assert.equal(headers['x-real-header'], 'real', 'the transport value, not the emulated "forged"');
        assert.equal(headers['x-untrusted'], undefined, 'not in http_headers');
        assert.equal(headers['x-emulated-ok'], 'yes');
      } finally {
        closeAll(client);
      }
    }));
  });
}
