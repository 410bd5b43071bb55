// Scenario 5: connection token refresh.
//  a) token with exp ~3 s + getToken: the SDK refreshes over the same connection and stays
//     connected past the original expiry (client.expired_close_delay is 1 s here, so a
//     server that ignored the refresh would close with 3005 well inside the window).
//  b) an already-expired token: server answers connect with error 109, the SDK calls
//     getToken and connects.
//  c) the refresh itself sends an already-expired token (getToken's first answer): the
//     server closes with 3005 "connection expired" (a reconnect code, not an error reply
//     that would stop the SDK), the SDK reconnects (getting 109 for the expired token or
//     connecting with a fresh one) and ends up connected.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  PROTOCOLS, startServer, tracked, newClient, connectClient, connToken, waitForEvent,
  waitFor, closeAll, uid, nowSec, delay,
} from '../harness.mjs';

describe('connection token refresh', () => {
  let server;
  before(async () => {
    server = await startServer({ client: { expired_close_delay: '1s' } });
  });
  after(async () => { if (server) await server.stop(); });

  for (const proto of PROTOCOLS) {
    test(`short-lived token is refreshed and the connection survives expiry [${proto.name}]`, tracked(() => server, async () => {
      const user = uid('refresh-');
      const exp = nowSec() + 3;
      let getTokenCalls = 0;
      const client = newClient(server, proto, {
        token: connToken(server, user, { exp }),
        getToken: async () => {
          getTokenCalls++;
          return connToken(server, user, { ttl: 3600 });
        },
      });
      const events = [];
      client.on('connecting', ctx => events.push(['connecting', ctx.code, ctx.reason]));
      client.on('disconnected', ctx => events.push(['disconnected', ctx.code, ctx.reason]));
      try {
        const connected = await connectClient(client);
        assert.ok(connected.client);
        // Listen for state changes only after the initial connect.
        const stateChanges = [];
        client.on('state', ctx => stateChanges.push(ctx));
        client.on('connected', ctx => stateChanges.push({ reconnected: ctx.client }));

        await waitFor(() => getTokenCalls >= 1, { timeoutMs: 6000, what: 'getToken to be called for refresh' });
        // Stay around until well past exp + expired_close_delay (1 s) + margin.
        const until = (exp + 3) * 1000;
        await delay(Math.max(0, until - Date.now()));
        assert.equal(client.state, 'connected', `state after expiry; events: ${JSON.stringify(events)}`);
        assert.deepEqual(stateChanges, [], 'no reconnect happened: the refresh kept the same connection');
        assert.equal(getTokenCalls, 1, 'getToken called exactly once (new token valid for 1 h)');
      } finally {
        closeAll(client);
      }
    }));

    test(`already-expired token -> error 109 -> getToken -> connected [${proto.name}]`, tracked(() => server, async () => {
      const user = uid('expired-');
      let getTokenCalls = 0;
      const client = newClient(server, proto, {
        token: connToken(server, user, { exp: nowSec() - 30 }),
        getToken: async () => {
          getTokenCalls++;
          return connToken(server, user, { ttl: 3600 });
        },
      });
      try {
        const connectErr = waitForEvent(client, 'error', {
          timeoutMs: 5000,
          filter: ctx => ctx.type === 'connect',
        });
        const connected = waitForEvent(client, 'connected', { timeoutMs: 8000 });
        client.connect();
        const err = await connectErr;
        assert.equal(err.error.code, 109, `connect error: ${JSON.stringify(err.error)}`);
        assert.equal(err.error.message, 'token expired');
        const ctx = await connected;
        assert.ok(ctx.client);
        assert.equal(getTokenCalls, 1);
        assert.equal(client.state, 'connected');
      } finally {
        closeAll(client);
      }
    }));
  }

  for (const proto of PROTOCOLS) {
    test(`refresh with an already-expired token -> 3005 -> reconnect -> connected [${proto.name}]`, tracked(() => server, async () => {
      const user = uid('refresh-expired-');
      const exp = nowSec() + 2;
      let getTokenCalls = 0;
      const client = newClient(server, proto, {
        token: connToken(server, user, { exp }),
        getToken: async () => {
          getTokenCalls++;
          // First answer (the refresh before exp): a token that already expired.
          if (getTokenCalls === 1) return connToken(server, user, { exp: nowSec() - 30 });
          return connToken(server, user, { ttl: 3600 });
        },
      });
      const events = [];
      client.on('connecting', ctx => events.push(['connecting', ctx.code, ctx.reason]));
      client.on('disconnected', ctx => events.push(['disconnected', ctx.code, ctx.reason]));
      client.on('connected', ctx => events.push(['connected', ctx.client]));
      client.on('error', ctx => events.push(['error', ctx.type, ctx.error && ctx.error.code]));
      try {
        await connectClient(client);
        events.length = 0;
        const reconnecting = waitForEvent(client, 'connecting', { timeoutMs: 8000 });
        const c = await reconnecting;
        assert.equal(c.code, 3005, `connecting ctx: ${JSON.stringify(c)}; events: ${JSON.stringify(events)}`);
        assert.equal(c.reason, 'connection expired');
        await waitFor(() => client.state === 'connected' && events.some(e => e[0] === 'connected'),
          { timeoutMs: 8000, what: `reconnect after 3005; events: ${JSON.stringify(events)}` });
        assert.ok(getTokenCalls >= 2, `getToken calls: ${getTokenCalls}; events: ${JSON.stringify(events)}`);
        assert.ok(!events.some(e => e[0] === 'disconnected'), `never disconnected: ${JSON.stringify(events)}`);
        assert.equal(client.state, 'connected');
      } finally {
        closeAll(client);
      }
    }));
  }
});
