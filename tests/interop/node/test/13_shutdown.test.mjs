// Scenario 13: graceful shutdown (dedicated server, shutdown.timeout 5s).
// On SIGTERM a connected SDK client is disconnected with 3001 "shutdown" (a reconnect code,
// so it shows up as a `connecting` event), a raw WebSocket that sends its connect only
// after the shutdown began is closed with 3001 instead of being connected, and the
// process exits within a few seconds.
import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  PROTOCOLS, startServer, tracked, newClient, connectClient, connToken, waitForEvent,
  closeAll, uid, openRaw, withTimeout,
} from '../harness.mjs';

const SHUTDOWN_TIMEOUT_S = 5;

describe('graceful shutdown', () => {
  let server;
  after(async () => { if (server) await server.stop(); });

  for (const proto of PROTOCOLS) {
    test(`SIGTERM: SDK client gets 3001, late connect gets close 3001, process exits [${proto.name}]`, tracked(() => server, async () => {
      server = await startServer({ shutdown: { timeout: `${SHUTDOWN_TIMEOUT_S}s` } });
      const client = newClient(server, proto, { token: connToken(server, uid('shutdown-')) });
      let raw = null;
      try {
        // A raw WebSocket that does not send connect yet.
        raw = await openRaw(server);
        let rawClose = null;
        raw.closed.then(c => { rawClose = c; });
        await connectClient(client);

        const connecting = waitForEvent(client, 'connecting', { timeoutMs: 5000 });
        const disconnected = [];
        client.on('disconnected', ctx => disconnected.push(ctx));
        const sigtermAt = Date.now();
        server.signal('SIGTERM');

        // The SDK client is told to come back later.
        const c = await connecting;
        assert.equal(c.code, 3001, `connecting ctx: ${JSON.stringify(c)}`);
        assert.equal(c.reason, 'shutdown');
        assert.deepEqual(disconnected, [], '3001 is a reconnect code: no disconnected event');
        // Stop it from reconnecting to the dying server.
        closeAll(client);

        // Shutdown is under way now (the SDK client got 3001): a connect must not succeed.
        // A server may also have closed the not-yet-connected socket with 3001 already,
        // in which case there is nothing to send; either way the close code is 3001.
        if (raw.ws.readyState === raw.ws.OPEN) {
          raw.ws.send(JSON.stringify({ id: 1, connect: { token: connToken(server, uid('late-')), name: 'raw-interop' } }));
        }
        const close = await withTimeout(raw.closed, 5000, 'close of the late connect');
        const reply = raw.messages.find(m => m.id === 1);
        assert.ok(!(reply && reply.connect), `connect during shutdown must not succeed: ${JSON.stringify(reply)}`);
        assert.equal(close.code, 3001, `close: ${JSON.stringify(close)}; replies: ${JSON.stringify(raw.messages)}`);
        assert.ok(rawClose !== null);

        // The process exits by itself within shutdown.timeout (+ margin).
        const exited = await server.waitForExit(SHUTDOWN_TIMEOUT_S * 1000 + 2000);
        const took = Date.now() - sigtermAt;
        assert.ok(took <= SHUTDOWN_TIMEOUT_S * 1000 + 2000, `exit took ${took} ms`);
        server.assertNoPanic('shutdown');
        assert.ok(exited, 'process exited');
      } finally {
        closeAll(client);
        if (raw) raw.ws.terminate();
        await server.stop();
        server = null;
      }
    }));
  }
});
