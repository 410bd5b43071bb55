// Scenario 24: a proxy backend that fails. The HTTP backend is slow (past the 500 ms proxy
// timeout), answers 500, answers a body that is not JSON, or drops the socket; or nothing
// listens at the endpoint. A client must hear "internal server error" (100) quickly, for a
// connect as for an RPC, while a client connected beforehand keeps being served, and the
// failures must not leak connections. A 403 with a status_to_code transform closes with the
// configured code. Also: the unnamed default proxies (channel.proxy.subscribe, rpc.proxy).
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  PROTOCOLS, startServer, tracked, newClient, connectClient, subscribeAndWait, connToken,
  waitFor, closeAll, uid, freePort, api,
} from '../harness.mjs';
import {
  startBackend, backendCall, proxyConfig, defaultProxyConfig, proxyClient, websocketWithHeaders,
  expectConnectInternalError, expectCallError, fdCount, FAIL_FAST_MS,
} from '../proxy.mjs';

const JSON_PROTO = PROTOCOLS.find(p => p.name === 'json');
const FAILURES = ['slow', 'status500', 'garbage', 'close'];
const FD_MARGIN = 6; // a few pooled backend connections may stay open, idle
const BAD_CONNECTS = 20;
const TASK_MARGIN = 4; // pooled backend connections have a task each

/** Tasks alive on the server's runtime, from the `info` API's node metrics. */
async function aliveTasks(server) {
  const info = await api(server, 'info', {});
  const count = info.nodes[0].metrics?.items?.spinwire_runtime_alive_tasks;
  assert.equal(typeof count, 'number', 'info reports spinwire_runtime_alive_tasks');
  return count;
}

function assertFast(elapsed, what) {
  assert.ok(elapsed < FAIL_FAST_MS, `${what} took ${elapsed} ms (limit ${FAIL_FAST_MS} ms)`);
}

describe('proxy: a failing HTTP backend', () => {
  let backend;
  let server;
  let healthy; // connected before any failure; must keep being served
  let echoes = 0;
  before(async () => {
    backend = await startBackend('http');
    // Node metrics are sampled every info_metrics_aggregate_interval: take them fresh.
    server = await startServer({ ...proxyConfig(backend), node: { info_metrics_aggregate_interval: '1ms' } });
    healthy = proxyClient(server, JSON_PROTO, { user: 'healthy' });
    await connectClient(healthy);
  });
  after(async () => {
    closeAll(healthy);
    if (server && server.failed && backend) console.error(`http backend stderr:\n${backend.log}`);
    if (server) await server.stop();
    if (backend) await backend.stop();
  });

  async function assertHealthyServed() {
    const n = ++echoes;
    const reply = await healthy.rpc('echo', { n });
    assert.deepEqual(reply.data, { echo: { n } }, 'the healthy client is still served');
    assert.equal(healthy.state, 'connected');
  }

  for (const mode of FAILURES) {
    test(`connect: backend ${mode} -> connect error 100 within ${FAIL_FAST_MS} ms; others unaffected`, tracked(() => server, async () => {
      const elapsed = await expectConnectInternalError(proxyClient(server, JSON_PROTO, { mode }));
      assertFast(elapsed, `connect error for ${mode}`);
      await assertHealthyServed();
    }));
  }

  for (const method of FAILURES) {
    test(`rpc: backend ${method} -> rpc error 100 within ${FAIL_FAST_MS} ms; the connection stays`, tracked(() => server, async () => {
      const elapsed = await expectCallError(healthy.rpc(method, {}), 100, 'internal server error');
      assertFast(elapsed, `rpc error for ${method}`);
      await assertHealthyServed();
    }));
  }

  test('connect: backend 403 with a status_to_code transform -> closed 4403 "forbidden"', tracked(() => server, async () => {
    const closes = [];
    const client = proxyClient(server, JSON_PROTO, { mode: 'status403' }, { websocket: websocketWithHeaders({}, closes) });
    const disconnected = [];
    client.on('disconnected', ctx => disconnected.push(ctx));
    try {
      client.connect();
      await waitFor(() => closes.length > 0, { timeoutMs: 3000, what: 'the server to close the WebSocket' });
      assert.deepEqual(closes[0], { code: 4403, reason: 'forbidden' });
      // 4403 is a reconnect code: the SDK keeps trying, there is no terminal disconnect.
      assert.equal(client.state, 'connecting');
      assert.deepEqual(disconnected, []);
    } finally {
      closeAll(client);
    }
  }));

  test(`${BAD_CONNECTS} failed connects leave no file descriptors or tasks behind`,
    { skip: fdCount(process.pid) === null && 'no /proc/<pid>/fd here' },
    tracked(() => server, async () => {
      await assertHealthyServed(); // a pooled backend connection exists before counting
      const pid = server.proc.pid;
      const before = fdCount(pid);
      const tasksBefore = await aliveTasks(server);
      for (let i = 0; i < BAD_CONNECTS; i++) {
        const mode = FAILURES[i % FAILURES.length];
        assertFast(await expectConnectInternalError(proxyClient(server, JSON_PROTO, { mode })), `connect ${i} (${mode})`);
      }
      await assertHealthyServed();
      let now = fdCount(pid);
      // Closed WebSockets and dropped backend requests go away asynchronously.
      await waitFor(() => (now = fdCount(pid)) <= before + FD_MARGIN, {
        timeoutMs: 6000, intervalMs: 200,
        what: `the server's open files to drop back (before ${before}, margin ${FD_MARGIN})`,
      }).catch(e => { throw new Error(`${e.message}; now ${now}`); });
      // Each failed connect had a session task and a writer; none may outlive its connection.
      let tasks = await aliveTasks(server);
      await waitFor(async () => (tasks = await aliveTasks(server)) <= tasksBefore + TASK_MARGIN, {
        timeoutMs: 6000, intervalMs: 200,
        what: `the server's tasks to drop back (before ${tasksBefore}, margin ${TASK_MARGIN})`,
      }).catch(e => { throw new Error(`${e.message}; now ${tasks}`); });
    }));
});

describe('proxy: unnamed default proxies and an unreachable backend', () => {
  let backend;
  let server;
  before(async () => {
    backend = await startBackend('http');
    const closedPort = await freePort(); // nothing listens there
    server = await startServer(defaultProxyConfig(backend, closedPort));
  });
  after(async () => {
    if (server) await server.stop();
    if (backend) await backend.stop();
  });

  test(`connect: unreachable connect proxy -> connect error 100 within ${FAIL_FAST_MS} ms`, tracked(() => server, async () => {
    const elapsed = await expectConnectInternalError(proxyClient(server, JSON_PROTO, { user: 'alice' }));
    assertFast(elapsed, 'connect error for an unreachable backend');
  }));

  test('a token connects without the connect proxy; channel.proxy.subscribe (name "default") answers', tracked(() => server, async () => {
    const user = uid('token-');
    const client = newClient(server, JSON_PROTO, { token: connToken(server, user) });
    try {
      const connected = await connectClient(client);
      const channel = `proxied:allowed-${uid()}`;
      const subscribed = await subscribeAndWait(client.newSubscription(channel));
      assert.deepEqual(subscribed.data, { hello: channel });
      const call = await backendCall(backend, 'subscribe', c => c.body.channel === channel);
      assert.equal(call.body.user, user);
      assert.equal(call.body.client, connected.client);

      // rpc.proxy points at the closed port too: the call fails, the connection stays.
      const elapsed = await expectCallError(client.rpc('echo', {}), 100, 'internal server error');
      assertFast(elapsed, 'rpc error for an unreachable backend');
      assert.equal(client.state, 'connected');
    } finally {
      closeAll(client);
    }
  }));
});
