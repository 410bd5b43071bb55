// Scenario 33: `client.concurrency`. With the default, a connection's commands are handled one
// after another, so a slow RPC (the test backend sleeps 3 s on method `slow`) holds up the
// reply to a fast one sent after it. With `concurrency: 2` the fast reply overtakes it (the
// SDKs match replies by id), and with both slots taken the next command waits for a slot.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { startServer, tracked, connToken, openRaw, withTimeout } from '../harness.mjs';
import { startBackend } from '../proxy.mjs';

/** Sends the frames as one WebSocket message; resolves with [id, ms after sending] per reply. */
async function replyTimes(server, commands, count) {
  const { ws, messages } = await openRaw(server);
  try {
    ws.send(JSON.stringify({ id: 1, connect: { token: connToken(server, 'c') } }));
    await withTimeout((async () => {
      while (!messages.some(m => m.id === 1)) await new Promise(r => setTimeout(r, 10));
    })(), 5000, 'connect reply');
    const started = Date.now();
    const seen = new Map();
    ws.send(commands.map(c => JSON.stringify(c)).join('\n'));
    await withTimeout((async () => {
      while (seen.size < count) {
        for (const m of messages) if (m.id > 1 && !seen.has(m.id)) seen.set(m.id, Date.now() - started);
        await new Promise(r => setTimeout(r, 10));
      }
    })(), 15000, 'rpc replies');
    return [...seen.entries()].sort((a, b) => a[1] - b[1]);
  } finally {
    ws.close();
  }
}

const rpc = (id, method) => ({ id, rpc: { method, data: {} } });

for (const concurrency of [0, 2]) {
  describe(`client.concurrency: ${concurrency}`, () => {
    let backend;
    let server;
    before(async () => {
      backend = await startBackend('http');
      server = await startServer({
        client: { concurrency },
        proxies: [{ name: 'rpc', endpoint: backend.endpoint('rpc'), timeout: '10s' }],
        rpc: { without_namespace: { proxy_enabled: true, proxy_name: 'rpc' } },
      });
    });
    after(async () => {
      if (server) await server.stop();
      if (backend) await backend.stop();
    });

    test('a fast RPC sent after a slow one', tracked(() => server, async () => {
      const times = await replyTimes(server, [rpc(2, 'slow'), rpc(3, 'echo')], 2);
      const order = times.map(([id]) => id);
      if (concurrency === 0) {
        assert.deepEqual(order, [2, 3], 'replies in command order');
        assert.ok(times[1][1] >= 2500, `the fast reply waited for the slow one: ${JSON.stringify(times)}`);
      } else {
        assert.deepEqual(order, [3, 2], 'the fast reply overtakes the slow one');
        assert.ok(times[0][1] < 1500, `the fast reply came at once: ${JSON.stringify(times)}`);
      }
    }));

    if (concurrency === 2) {
      test('with every slot taken, the next command waits for one', tracked(() => server, async () => {
        const times = await replyTimes(server, [rpc(2, 'slow'), rpc(3, 'slow'), rpc(4, 'echo')], 3);
        const echo = times.find(([id]) => id === 4);
        assert.ok(echo[1] >= 2500, `the third command waited for a slot: ${JSON.stringify(times)}`);
      }));
    }
  });
}
