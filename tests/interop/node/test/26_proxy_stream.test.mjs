// Scenario 26: subscribe stream proxies (gRPC only). A tokenless subscribe to `streamed:*`
// (unidirectional) or `bidi:*` (bidirectional) opens a stream to the gRPC backend
// (tests/interop/backends/grpc_backend.py), which acts by the channel name: its first
// message decides the subscription like the unary subscribe proxy, every later one is a
// publication for this one subscriber. The stream ending, breaking or timing out, and the
// client leaving, must each show up as Centrifugo shows them; the backend's records show
// what Spinwire did to the stream (opened, cancelled) and what a bidirectional one carried.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  PROTOCOLS, startServer, tracked, connectClient, subscribeAndWait, waitForEvent,
  waitForCount, collect, closeAll, uid, delay, api,
} from '../harness.mjs';
import {
  FAIL_FAST_MS, startBackend, grpcSkipReason, backendCall, streamProxyConfig, streamOf,
  proxyClient, expectCallError, stateEvents,
} from '../proxy.mjs';

const JSON_PROTO = PROTOCOLS.find(p => p.name === 'json');
const STREAM_DATA = [{ n: 1 }, { n: 2 }, { n: 3 }]; // what the backend sends on an ok stream
const SETTLE_MS = 300; // time for a wrongly delivered publication to arrive before counting
const CLOSE_WITHIN_MS = 2000; // for the server to cancel a stream nobody listens to any more

describe('subscribe stream proxy to the gRPC backend', { skip: grpcSkipReason() }, () => {
  let backend;
  let server;
  before(async () => {
    backend = await startBackend('grpc');
    server = await startServer(streamProxyConfig(backend));
  });
  after(async () => {
    if (server && server.failed && backend) console.error(`grpc backend stderr:\n${backend.log}`);
    if (server) await server.stop();
    if (backend) await backend.stop();
  });

  /** Connect as `data` says and return [client, connected ctx]. */
  async function connectAs(proto, data) {
    const client = proxyClient(server, proto, data);
    return [client, await connectClient(client)];
  }

  /** A new subscription with its publications recorded from the start: [sub, pubs]. */
  function streamSub(client, channel) {
    const sub = client.newSubscription(channel);
    return [sub, collect(sub, 'publication')];
  }

  /** The ok stream's three publications, in order, from this subscriber's own stream (the
   *  backend tags each with its stream's client id) and without an offset (a stream's
   *  publications are not in the channel's history: no recovery). */
  async function expectStreamPublications(pubs, clientId, proto = JSON_PROTO) {
    const got = await waitForCount(pubs, STREAM_DATA.length, { timeoutMs: 3000, what: 'stream publications' });
    assert.deepEqual(got.map(p => proto.decode(p.data)), STREAM_DATA);
    assert.deepEqual(got.map(p => p.tags), STREAM_DATA.map(() => ({ stream: clientId })), 'from another subscriber\'s stream');
    assert.deepEqual(got.map(p => p.offset), STREAM_DATA.map(() => undefined));
  }

  /** This subscriber's stream records in `channel`. */
  async function streamCalls(channel, clientId) {
    return (await backend.calls()).filter(streamOf(channel, clientId));
  }

  /** The outcomes of a subscriber's streams in `channel`, once every stream it opened has
   *  closed; fails when one is still open after timeoutMs. */
  async function streamsClosed(channel, clientId, timeoutMs = CLOSE_WITHIN_MS) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const calls = await streamCalls(channel, clientId);
      const opened = calls.filter(c => c.kind === 'stream_open').length;
      const outcomes = calls.filter(c => c.kind === 'stream_closed').map(c => c.outcome);
      if (opened > 0 && outcomes.length === opened) return outcomes;
      if (Date.now() >= deadline) {
        throw new Error(`${opened} stream(s) opened, ${outcomes.length} closed after ${timeoutMs} ms: ${JSON.stringify(outcomes)}`);
      }
      await delay(50);
    }
  }

  for (const proto of PROTOCOLS) {
    test(`ok: subscribed with the first message's data, then this subscriber's own three publications [${proto.name}]`, tracked(() => server, async () => {
      const [alice, aliceCtx] = await connectAs(proto, { user: 'alice' });
      const [bob, bobCtx] = await connectAs(proto, { user: 'bob' });
      try {
        const channel = `streamed:ok-${uid()}`;
        const [sub, pubs] = streamSub(alice, channel);
        const subscribed = await subscribeAndWait(sub);
        assert.deepEqual(proto.decode(subscribed.data), { stream: 'open' });
        assert.deepEqual([subscribed.recoverable, subscribed.positioned, subscribed.streamPosition], [false, false, undefined]);
        const opened = await backendCall(backend, 'stream_open', streamOf(channel, aliceCtx.client));
        assert.deepEqual(opened.stream, { channel, client: aliceCtx.client, user: 'alice', direction: 'unidirectional' });
        await expectStreamPublications(pubs, aliceCtx.client, proto);

        // A second subscriber of the channel gets a stream of its own, and nothing of alice's.
        const [bobSub, bobPubs] = streamSub(bob, channel);
        assert.deepEqual(proto.decode((await subscribeAndWait(bobSub)).data), { stream: 'open' });
        await expectStreamPublications(bobPubs, bobCtx.client, proto);
        await delay(SETTLE_MS);
        assert.equal(pubs.length, 3, 'bob\'s stream reached alice');
        assert.equal(bobPubs.length, 3);
        assert.equal(sub.state, 'subscribed', 'an ok stream stays open');
      } finally {
        closeAll(alice, bob);
      }
    }));
  }

  test('end: the backend ending the stream unsubscribes with 2000 after its publication', tracked(() => server, async () => {
    const [client, connected] = await connectAs(JSON_PROTO, { user: 'alice' });
    const states = stateEvents(client);
    try {
      const channel = `streamed:end-${uid()}`;
      const sub = client.newSubscription(channel);
      const order = [];
      sub.on('publication', ctx => order.push(['publication', ctx.data]));
      const unsubscribed = waitForEvent(sub, 'unsubscribed', { timeoutMs: 3000 });
      sub.on('unsubscribed', ctx => order.push(['unsubscribed', ctx.code]));
      await subscribeAndWait(sub);
      const ctx = await unsubscribed;
      assert.deepEqual({ code: ctx.code, reason: ctx.reason }, { code: 2000, reason: 'server unsubscribe' });
      assert.deepEqual(order, [['publication', { n: 1 }], ['unsubscribed', 2000]], 'the publication sent before the end comes first');
      assert.equal(sub.state, 'unsubscribed');
      assert.equal(client.state, 'connected');
      assert.deepEqual(states, [], 'only the subscription ended');
      assert.deepEqual(await streamsClosed(channel, connected.client), ['ended']);
    } finally {
      closeAll(client);
    }
  }));

  test('deny: a first message with error 103 is the subscribe error 103', tracked(() => server, async () => {
    const [client] = await connectAs(JSON_PROTO, { user: 'alice' });
    try {
      const sub = client.newSubscription(`streamed:deny-${uid()}`);
      const subscribed = collect(sub, 'subscribed');
      const unsubscribed = waitForEvent(sub, 'unsubscribed', { timeoutMs: 3000 });
      sub.subscribe();
      const ctx = await unsubscribed;
      assert.deepEqual({ code: ctx.code, reason: ctx.reason }, { code: 103, reason: 'permission denied' });
      assert.equal(subscribed.length, 0);
      assert.equal(client.state, 'connected', 'a refused subscription leaves the connection alone');
    } finally {
      closeAll(client);
    }
  }));

  test('kick: a first message with a disconnect closes the connection with 4502 (terminal)', tracked(() => server, async () => {
    const [client] = await connectAs(JSON_PROTO, { user: 'alice' });
    try {
      const sub = client.newSubscription(`streamed:kick-${uid()}`);
      const subscribed = collect(sub, 'subscribed');
      // 4500-4999 is terminal for the SDK: 'disconnected', no reconnect.
      const disconnected = waitForEvent(client, 'disconnected', { timeoutMs: 3000 });
      sub.subscribe();
      const d = await disconnected;
      assert.deepEqual({ code: d.code, reason: d.reason }, { code: 4502, reason: 'stream kick' });
      assert.equal(client.state, 'disconnected');
      assert.equal(subscribed.length, 0);
    } finally {
      closeAll(client);
    }
  }));

  test('fail: a broken stream is 2500, then the SDK resubscribes on a new stream', tracked(() => server, async () => {
    const [client, connected] = await connectAs(JSON_PROTO, { user: 'alice' });
    const states = stateEvents(client);
    try {
      const channel = `streamed:fail-${uid()}`;
      const [sub, pubs] = streamSub(client, channel);
      const unsubscribed = collect(sub, 'unsubscribed');
      const first = await subscribeAndWait(sub);
      assert.deepEqual(first.data, { stream: 'open' });
      // Registered once subscribed: the next ones are those the broken stream causes.
      const subscribing = waitForEvent(sub, 'subscribing', { timeoutMs: 3000 });
      const again = waitForEvent(sub, 'subscribed', { timeoutMs: 5000 });
      const ctx = await subscribing;
      assert.deepEqual({ code: ctx.code, reason: ctx.reason }, { code: 2500, reason: 'insufficient state' });
      assert.deepEqual((await again).data, { stream: 'open' }, 'subscribed again, on a new stream');
      await expectStreamPublications(pubs, connected.client);
      assert.deepEqual(unsubscribed, []);
      assert.equal(sub.state, 'subscribed');
      assert.deepEqual(states, [], 'the connection is untouched');
      const calls = await streamCalls(channel, connected.client);
      assert.deepEqual(calls.filter(c => c.kind === 'stream_open').length, 2);
      assert.deepEqual(calls.filter(c => c.kind === 'stream_closed').map(c => c.outcome), ['aborted'], 'the second one is still open');
    } finally {
      closeAll(client);
    }
  }));

  test('slow: no first message within the proxy timeout is the temporary error 100, and the stream is cancelled', tracked(() => server, async () => {
    const [client, connected] = await connectAs(JSON_PROTO, { user: 'alice' });
    try {
      const channel = `streamed:slow-${uid()}`;
      const sub = client.newSubscription(channel);
      const subscribed = collect(sub, 'subscribed');
      const error = waitForEvent(sub, 'error', { timeoutMs: 3000 });
      const started = Date.now();
      sub.subscribe();
      const ctx = await error;
      const elapsed = Date.now() - started;
      sub.unsubscribe(); // it would subscribe again and again (100 is temporary)
      assert.equal(ctx.type, 'subscribe');
      assert.deepEqual({ code: ctx.error.code, message: ctx.error.message, temporary: ctx.error.temporary },
        { code: 100, message: 'internal server error', temporary: true });
      // The 500 ms proxy timeout, not an immediate failure, and not the backend's 2 s.
      assert.ok(elapsed >= 400 && elapsed < FAIL_FAST_MS, `error after ${elapsed} ms`);
      assert.equal(subscribed.length, 0);
      // The server gave up on the stream: it cancels it rather than leaving it open.
      const outcomes = await streamsClosed(channel, connected.client);
      assert.deepEqual([...new Set(outcomes)], ['cancelled'], JSON.stringify(outcomes));
    } finally {
      closeAll(client);
    }
  }));

  test('unsubscribe: the server cancels the stream', tracked(() => server, async () => {
    const [client, connected] = await connectAs(JSON_PROTO, { user: 'alice' });
    try {
      const channel = `streamed:ok-${uid()}`;
      const [sub, pubs] = streamSub(client, channel);
      await subscribeAndWait(sub);
      await expectStreamPublications(pubs, connected.client);
      sub.unsubscribe();
      assert.deepEqual(await streamsClosed(channel, connected.client), ['cancelled']);
      assert.equal(client.state, 'connected');
    } finally {
      closeAll(client);
    }
  }));

  test('disconnect: the server cancels the stream', tracked(() => server, async () => {
    const [client, connected] = await connectAs(JSON_PROTO, { user: 'alice' });
    const channel = `streamed:ok-${uid()}`;
    try {
      const [sub, pubs] = streamSub(client, channel);
      await subscribeAndWait(sub);
      await expectStreamPublications(pubs, connected.client);
    } finally {
      closeAll(client);
    }
    assert.deepEqual(await streamsClosed(channel, connected.client), ['cancelled']);
  }));

  for (const proto of PROTOCOLS) {
    test(`bidi: a publish goes to the backend on the publisher's stream and its echo comes back [${proto.name}]`, tracked(() => server, async () => {
      const [client, connected] = await connectAs(proto, { user: 'alice' });
      const [watcher, watcherCtx] = await connectAs(proto, { user: 'watcher' });
      try {
        const channel = `bidi:ok-${uid()}`;
        const [sub, pubs] = streamSub(client, channel);
        assert.deepEqual(proto.decode((await subscribeAndWait(sub)).data), { stream: 'open' });
        const opened = await backendCall(backend, 'stream_open', streamOf(channel, connected.client));
        assert.equal(opened.stream.direction, 'bidirectional');
        assert.deepEqual([opened.body.channel, opened.body.user], [channel, 'alice'], 'the first request\'s subscribe_request');
        await expectStreamPublications(pubs, connected.client, proto);
        const [watcherSub, watcherPubs] = streamSub(watcher, channel);
        await subscribeAndWait(watcherSub);
        await expectStreamPublications(watcherPubs, watcherCtx.client, proto);

        assert.deepEqual(await client.publish(channel, proto.encode({ hello: 1 })), {}, 'an empty publish result');
        const logged = await backendCall(backend, 'stream_publication', streamOf(channel, connected.client));
        assert.deepEqual(logged.body.data, { hello: 1 }, 'the publish data on the publisher\'s stream');
        const [, , , echo] = await waitForCount(pubs, 4, { timeoutMs: 3000, what: 'publications with the echo' });
        assert.deepEqual(proto.decode(echo.data), { echo: { hello: 1 } });
        assert.deepEqual(echo.tags, { stream: connected.client });
        await delay(SETTLE_MS);
        assert.equal(pubs.length, 4, 'exactly one echo');
        assert.equal(watcherPubs.length, 3, 'the publish went to the backend only, not into the channel');
        const published = (await backend.calls('stream_publication')).filter(c => c.stream.channel === channel);
        assert.equal(published.length, 1);
      } finally {
        closeAll(client, watcher);
      }
    }));
  }

  test('uni: a publish into a unidirectional stream channel is error 108', tracked(() => server, async () => {
    const [client, connected] = await connectAs(JSON_PROTO, { user: 'alice' });
    try {
      const channel = `streamed:ok-${uid()}`;
      const [sub, pubs] = streamSub(client, channel);
      await subscribeAndWait(sub);
      await expectStreamPublications(pubs, connected.client);
      await expectCallError(client.publish(channel, { hello: 1 }), 108, 'not available');
      await delay(SETTLE_MS);
      assert.equal(pubs.length, 3, 'the refused publish reached nobody');
      const sent = (await backend.calls()).filter(c => c.stream !== undefined && c.stream.channel === channel);
      assert.deepEqual(sent.map(c => c.kind), ['stream_open'], 'nothing but the stream\'s start reached the backend');
    } finally {
      closeAll(client);
    }
  }));

  test('server API publish into the channel reaches a stream subscriber too', tracked(() => server, async () => {
    const [client, connected] = await connectAs(JSON_PROTO, { user: 'alice' });
    try {
      const channel = `streamed:ok-${uid()}`;
      const [sub, pubs] = streamSub(client, channel);
      await subscribeAndWait(sub);
      await expectStreamPublications(pubs, connected.client);
      await api(server, 'publish', { channel, data: { from: 'api' } });
      const [, , , pub] = await waitForCount(pubs, 4, { timeoutMs: 3000, what: 'publications with the API one' });
      assert.deepEqual(pub.data, { from: 'api' });
      assert.equal(pub.tags, undefined, 'the channel\'s own publication, untagged');
    } finally {
      closeAll(client);
    }
  }));
});
