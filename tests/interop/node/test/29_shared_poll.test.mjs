// Shared-poll subscriptions with npm centrifuge 5.8 (newSharedPollSubscription): tracking signed
// keys, updates polled from a backend once per channel for every subscriber, version filters,
// removals, untrack, reconnects that replay tracking, signature expiry and refresh, versionless
// channels, and shared_poll_publish. The backend is a small HTTP refresh proxy in this file that
// counts its calls; the namespaces follow the SDK's own integration config.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { createHash, createHmac } from 'node:crypto';

import {
  PROTOCOLS, NAMESPACES, startServer, tracked, newClient, connectClient, connToken, api,
  waitForEvent, waitForCount, collect, closeAll, uid, delay, freePort,
} from '../harness.mjs';

const SECRET = 'test-poll-secret';

/** The refresh backend: answers every tracked key it knows, with its data and version. */
function startBackend(port) {
  const items = new Map();
  const requests = [];
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', chunk => { body += chunk; });
    req.on('end', () => {
      const parsed = JSON.parse(body);
      requests.push(parsed);
      const answer = [];
      for (const item of parsed.items || []) {
        const stored = items.get(`${parsed.channel}|${item.key}`);
        if (stored) answer.push({ key: item.key, ...stored });
      }
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ result: { items: answer } }));
    });
  });
  return new Promise(resolve => server.listen(port, '127.0.0.1', () => resolve({
    set: (channel, key, value) => items.set(`${channel}|${key}`, value),
    requests,
    close: () => new Promise(r => server.close(r)),
  })));
}

function sign(channel, keys, user, ttl = 3600) {
  const now = Math.floor(Date.now() / 1000);
  const exp = now + ttl;
  const keysHash = createHash('sha256').update(keys.join('\x00')).digest('hex');
  const mac = createHmac('sha256', SECRET).update(`${now}\x00${exp}\x00${user}\x00${channel}\x00${keysHash}`).digest('hex');
  return `${now}:${exp}:${mac}`;
}

describe('shared poll subscriptions (npm centrifuge)', () => {
  let server;
  let backend;
  before(async () => {
    const port = await freePort();
    backend = await startBackend(port);
    const poll = mode => ({
      proxy_name: 'poll_backend', refresh_interval: '200ms', refresh_batch_size: 100,
      max_keys_per_connection: 3, ...(mode ? { mode } : {}),
    });
    server = await startServer({
      shared_poll: { hmac_secret_key: SECRET },
      proxies: [{ name: 'poll_backend', endpoint: `http://127.0.0.1:${port}/refresh`, timeout: '5s' }],
      channel: {
        namespaces: [
          ...NAMESPACES,
          { name: 'poll', subscription_type: 'shared_poll', allow_subscribe_for_client: true,
            shared_poll: { ...poll('versioned'), publish_enabled: true } },
          { name: 'pollvl', subscription_type: 'shared_poll', allow_subscribe_for_client: true, shared_poll: poll() },
        ],
      },
    });
  });
  after(async () => {
    if (server) await server.stop();
    if (backend) await backend.close();
  });

  async function subscribed(proto, namespace, options = {}) {
    const user = uid('poll-user-');
    const client = newClient(server, proto, { token: connToken(server, user) });
    await connectClient(client);
    const channel = `${namespace}:${uid('c-')}-${proto.name}`;
    const sub = client.newSharedPollSubscription(channel, {
      getSignature: async ctx => ({ keys: ctx.keys, signature: sign(channel, ctx.keys, user) }),
      ...options,
    });
    const ready = waitForEvent(sub, 'subscribed', { timeoutMs: 10000 });
    sub.subscribe();
    return { client, sub, channel, user, ctx: await ready };
  }

  for (const proto of PROTOCOLS) {
    const value = data => proto.decode(data);

    test(`tracked keys are polled once for two subscribers and updates reach both [${proto.name}]`, tracked(() => server, async () => {
      const a = await subscribed(proto, 'poll');
      const b = newClient(server, proto, { token: connToken(server, 'other') });
      try {
        await connectClient(b);
        const subB = b.newSharedPollSubscription(a.channel, {
          getSignature: async ctx => ({ keys: ctx.keys, signature: sign(a.channel, ctx.keys, 'other') }),
        });
        const readyB = waitForEvent(subB, 'subscribed');
        subB.subscribe();
        await readyB;
        backend.set(a.channel, 'k1', { data: { value: 'hello' }, version: 1 });
        backend.set(a.channel, 'k2', { data: { value: 'world' }, version: 1 });
        const updatesA = collect(a.sub, 'update');
        const updatesB = collect(subB, 'update');
        a.sub.track([{ key: 'k1', version: 0 }, { key: 'k2', version: 0 }], sign(a.channel, ['k1', 'k2'], a.user));
        subB.track(['k1']);
        await waitForCount(updatesA, 2, { what: "A's two keys" });
        await waitForCount(updatesB, 1, { what: "B's key" });
        assert.deepEqual(updatesA.map(u => [u.key, u.version, value(u.data).value]).sort(), [['k1', 1, 'hello'], ['k2', 1, 'world']]);
        assert.equal(updatesB[0].key, 'k1');
        const before = backend.requests.filter(r => r.channel === a.channel).length;
        backend.set(a.channel, 'k1', { data: { value: 'again' }, version: 2 });
        await waitForCount(updatesA, 3, { what: 'version 2 for A' });
        await waitForCount(updatesB, 2, { what: 'version 2 for B' });
        const cycles = () => backend.requests.filter(r => r.channel === a.channel).slice(before);
        // The next timed cycle asks with the version the node now has.
        const deadline = Date.now() + 3000;
        while (!cycles().some(r => r.items.some(i => i.version === 2)) && Date.now() < deadline) await delay(50);
        assert.ok(cycles().some(r => r.items.some(i => i.version === 2)), 'versioned: the node tells the backend what it has');
        assert.ok(cycles().every(r => new Set(r.items.map(i => i.key)).size === r.items.length), 'one entry per key per call');
        assert.ok(cycles().some(r => r.items.length === 2), 'a timed cycle asks for both keys at once, for both subscribers');
      } finally {
        closeAll(a.client, b);
      }
    }));

    test(`version filter, removal and untrack [${proto.name}]`, tracked(() => server, async () => {
      const { client, sub, channel, user } = await subscribed(proto, 'poll');
      try {
        const updates = collect(sub, 'update');
        backend.set(channel, 'have', { data: { v: 5 }, version: 5 });
        backend.set(channel, 'gone', { data: { v: 1 }, version: 1 });
        sub.track([{ key: 'have', version: 5 }, { key: 'gone', version: 0 }], sign(channel, ['have', 'gone'], user));
        await waitForCount(updates, 1, { what: 'the key the client lacked' });
        assert.equal(updates[0].key, 'gone', 'the key tracked at its current version is not re-sent');
        backend.set(channel, 'have', { data: { v: 6 }, version: 6 });
        backend.set(channel, 'gone', { removed: true });
        await waitForCount(updates, 3, { what: 'version 6 and the removal' });
        const byKey = Object.fromEntries(updates.slice(1).map(u => [u.key, u]));
        assert.equal(byKey.have.version, 6);
        assert.deepEqual(value(byKey.have.data), { v: 6 });
        assert.equal(byKey.gone.removed, true);
        sub.untrack(['have']);
        await delay(100);
        backend.set(channel, 'have', { data: { v: 7 }, version: 7 });
        await delay(700);
        assert.equal(updates.length, 3, 'nothing after untrack');
      } finally {
        closeAll(client);
      }
    }));

    test(`a reconnect replays tracking with the versions held [${proto.name}]`, tracked(() => server, async () => {
      const { client, sub, channel } = await subscribed(proto, 'poll');
      try {
        const updates = collect(sub, 'update');
        backend.set(channel, 'rk1', { data: { v: 1 }, version: 1 });
        sub.track(['rk1']);
        await waitForCount(updates, 1, { what: 'version 1' });
        const gone = waitForEvent(client, 'disconnected');
        client.disconnect();
        await gone;
        backend.set(channel, 'rk1', { data: { v: 2 }, version: 2 });
        client.connect();
        await waitForCount(updates, 2, { what: 'version 2 after the reconnect' });
        assert.deepEqual(updates.map(u => u.version), [1, 2], 'version 1 is not delivered again');
      } finally {
        closeAll(client);
      }
    }));

    test(`bad, expired and excess tracking get 103, 109 (then a fresh signature) and 106 [${proto.name}]`, tracked(() => server, async () => {
      const { client, sub, channel, user } = await subscribed(proto, 'poll');
      try {
        const errors = collect(sub, 'error');
        sub.track([{ key: 'k1', version: 0 }], 'invalid-signature');
        await waitForCount(errors, 1, { what: 'the track error' });
        assert.equal(errors[0].type, 'track');
        assert.equal(errors[0].error.code, 103);
        const updates = collect(sub, 'update');
        backend.set(channel, 'late', { data: { v: 1 }, version: 1 });
        sub.track([{ key: 'late', version: 0 }], sign(channel, ['late'], user, -60));
        await waitForCount(updates, 1, { what: 'the key after the SDK fetched a fresh signature (109)' });
        assert.equal(updates[0].key, 'late');
        const keys = ['a', 'b', 'c', 'd'];
        sub.track(keys.map(key => ({ key, version: 0 })), sign(channel, keys, user));
        const deadline = Date.now() + 5000;
        while (!errors.some(e => e.error.code === 106) && Date.now() < deadline) await delay(50);
        assert.ok(errors.some(e => e.error.code === 106), `max_keys_per_connection is 3: ${JSON.stringify(errors.map(e => e.error.code))}`);
      } finally {
        closeAll(client);
      }
    }));

    test(`versionless channels carry synthetic versions and an 8-letter epoch [${proto.name}]`, tracked(() => server, async () => {
      const { client, sub, channel } = await subscribed(proto, 'pollvl');
      try {
        assert.equal(sub._sharedPollEpoch.length, 8);
        const updates = collect(sub, 'update');
        backend.set(channel, 'vl', { data: { val: 'hello' } });
        sub.track(['vl']);
        await waitForCount(updates, 1, { what: 'the first value' });
        assert.ok(updates[0].version > 0);
        await delay(600);
        assert.equal(updates.length, 1, 'unchanged data is not sent again');
        backend.set(channel, 'vl', { data: { val: 'changed' } });
        await waitForCount(updates, 2, { what: 'the changed value' });
        assert.ok(updates[1].version > updates[0].version);
        assert.deepEqual(value(updates[1].data), { val: 'changed' });
      } finally {
        closeAll(client);
      }
    }));

    test(`shared_poll_publish pushes a key at once; stale versions are dropped [${proto.name}]`, tracked(() => server, async () => {
      const { client, sub, channel } = await subscribed(proto, 'poll');
      try {
        const updates = collect(sub, 'update');
        backend.set(channel, 'pub', { data: { v: 1 }, version: 1 });
        sub.track(['pub']);
        await waitForCount(updates, 1, { what: 'version 1' });
        await api(server, 'shared_poll_publish', { channel, key: 'pub', data: { v: 10 }, version: 10 });
        await waitForCount(updates, 2, { what: 'the published version' });
        assert.equal(updates[1].version, 10);
        await api(server, 'shared_poll_publish', { channel, key: 'pub', data: { v: 9 }, version: 9 });
        await delay(500);
        assert.equal(updates.length, 2, 'version 9 is older than 10');
        await assert.rejects(api(server, 'shared_poll_publish', { channel: `pollvl:${uid()}`, key: 'k', data: {}, version: 1 }), e => e.code === 108);
        await assert.rejects(api(server, 'shared_poll_publish', { channel, key: 'k', data: {} }), e => e.code === 107);
        await assert.rejects(api(server, 'publish', { channel, data: {} }), e => e.code === 107);
      } finally {
        closeAll(client);
      }
    }));
  }
});
