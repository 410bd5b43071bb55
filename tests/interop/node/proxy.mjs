// Helpers for the proxy suites (23_proxy, 24_proxy_faults, 26_proxy_stream): the test backends of
// tests/interop/backends as child processes, the Spinwire proxy configs (Centrifugo v6
// keys), a WebSocket that sets real upgrade headers, and what centrifuge-js shows for each
// answer of the server (the one place that encodes the SDK's side of an outcome).

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

import {
  REPO_ROOT, WebSocket, newClient, waitFor, withTimeout, closeAll,
} from './harness.mjs';

export const BACKENDS_DIR = join(REPO_ROOT, 'tests', 'interop', 'backends');
export const VENV_PYTHON = join(REPO_ROOT, 'tests', 'interop', 'python', '.venv', 'bin', 'python');

// The proxy timeout of every config here, and how soon a client must hear about a backend
// that failed: the timeout plus a margin for the connect round trip on a busy 2-core box.
export const PROXY_TIMEOUT = '500ms';
export const FAIL_FAST_MS = 1500;

// ---------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------

/** Why the gRPC backend cannot run here (false when it can): it needs the Python venv. */
export function grpcSkipReason() {
  if (existsSync(VENV_PYTHON)) return false;
  return `gRPC backend needs ${VENV_PYTHON} (created by tests/interop/run.sh; grpcio from python/requirements.txt)`;
}

/** A running test backend; `calls()` normalizes both backends' records to
 *  {kind, body, headers, at}: body is the proxy request (gRPC: as JSON with `bytes`
 *  fields decoded), headers the HTTP headers or gRPC metadata, lower-cased. The gRPC
 *  backend's subscribe stream records also keep `stream` ({channel, client, user,
 *  direction}) and, for 'stream_closed', `outcome` ('ended', 'aborted' or 'cancelled'). */
class Backend {
  constructor(kind, proc, ports) {
    this.kind = kind;
    this.proc = proc;
    this.port = ports.port;
    this.callsUrl = `http://127.0.0.1:${ports.calls_port || ports.port}`;
    this.log = '';
    this.exited = null;
  }

  /** The proxy endpoint for one event: HTTP has a path per event, gRPC one address. */
  endpoint(event) {
    return this.kind === 'http' ? `http://127.0.0.1:${this.port}/${event}` : `grpc://127.0.0.1:${this.port}`;
  }

  async calls(kind) {
    const res = await fetch(`${this.callsUrl}/calls`, { signal: AbortSignal.timeout(3000) });
    const raw = await res.json();
    const all = raw.map(c => this.kind === 'http'
      ? { kind: c.kind, body: c.body, headers: c.headers, at: c.at }
      : {
        kind: c.kind, body: c.request, headers: c.metadata, at: c.at,
        ...('stream' in c ? { stream: c.stream } : {}), ...('outcome' in c ? { outcome: c.outcome } : {}),
      });
    return kind ? all.filter(c => c.kind === kind) : all;
  }

  async stop() {
    if (this.exited !== null) return;
    const gone = new Promise(r => this.proc.once('exit', r));
    this.proc.kill('SIGTERM');
    await withTimeout(gone, 5000, `${this.kind} backend exit`).catch(() => this.proc.kill('SIGKILL'));
  }
}

/** Start the `http` (node) or `grpc` (venv python) backend; resolves once it printed its
 *  ports. The backend exits on its own when this process dies (--watch-stdin). */
export async function startBackend(kind) {
  const [cmd, script] = kind === 'http'
    ? [process.execPath, join(BACKENDS_DIR, 'http_backend.mjs')]
    : [VENV_PYTHON, join(BACKENDS_DIR, 'grpc_backend.py')];
  const proc = spawn(cmd, [script, '--watch-stdin'], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let log = '';
  proc.stderr.on('data', c => { log = (log + c.toString()).slice(-64 * 1024); });
  let ports;
  try {
    ports = await withTimeout(new Promise((resolve, reject) => {
      proc.stdout.on('data', c => {
        out += c.toString();
        const nl = out.indexOf('\n');
        if (nl >= 0) resolve(JSON.parse(out.slice(0, nl)));
      });
      proc.once('exit', (code, signal) => reject(new Error(`${kind} backend exited (${code ?? signal})`)));
      proc.once('error', reject);
    }), 20000, `${kind} backend to print its port`);
  } catch (e) {
    proc.kill('SIGKILL');
    throw new Error(`${e.message}; backend stderr: ${log || '(empty)'}`);
  }
  const backend = new Backend(kind, proc, ports);
  proc.stderr.on('data', c => { backend.log = (backend.log + c.toString()).slice(-64 * 1024); });
  proc.on('exit', (code, signal) => { backend.exited = { code, signal }; });
  return backend;
}

/** The first call of `kind` matching `pred`, waiting for it up to timeoutMs (calls such as
 *  refresh come later than the client action that causes them). */
export async function backendCall(backend, kind, pred, { timeoutMs = 3000 } = {}) {
  let found;
  await waitFor(async () => {
    found = (await backend.calls(kind)).find(pred);
    return found !== undefined;
  }, { timeoutMs, intervalMs: 50, what: `a ${kind} call at the ${backend.kind} backend` });
  return found;
}

// ---------------------------------------------------------------------------------------
// Spinwire configs (extra keys merged over the harness base config)
// ---------------------------------------------------------------------------------------

/** Every event proxied to `backend` by named proxies, as the brief's config. The `http`
 *  block (static headers, status transform) is for HTTP endpoints only, as in Centrifugo. */
export function proxyConfig(backend) {
  const timeout = PROXY_TIMEOUT;
  const connect = {
    enabled: true, endpoint: backend.endpoint('connect'), timeout,
    http_headers: ['x-real-header'], emulated_headers: ['x-emulated-ok'],
  };
  if (backend.kind === 'http') {
    connect.http = {
      static_headers: { 'x-static': 's' },
      status_to_code_transforms: [{ status_code: 403, to_disconnect: { code: 4403, reason: 'forbidden' } }],
    };
  }
  return {
    client: { proxy: { connect, refresh: { enabled: true, endpoint: backend.endpoint('refresh'), timeout } } },
    proxies: [
      { name: 'subscribe', endpoint: backend.endpoint('subscribe'), timeout, include_connection_meta: true },
      { name: 'publish', endpoint: backend.endpoint('publish'), timeout },
      { name: 'rpc', endpoint: backend.endpoint('rpc'), timeout },
      { name: 'sub_refresh', endpoint: backend.endpoint('sub_refresh'), timeout },
    ],
    channel: {
      namespaces: [{
        name: 'proxied',
        subscribe_proxy_enabled: true, subscribe_proxy_name: 'subscribe',
        publish_proxy_enabled: true, publish_proxy_name: 'publish',
        sub_refresh_proxy_enabled: true, sub_refresh_proxy_name: 'sub_refresh',
      }],
    },
    rpc: { without_namespace: { proxy_enabled: true, proxy_name: 'rpc' } },
  };
}

/** The unnamed proxies: `channel.proxy.subscribe` to the backend (a namespace with
 *  subscribe_proxy_enabled and no name uses it), and connect and `rpc.proxy` pointing at
 *  `closedPort`, where nothing listens. */
export function defaultProxyConfig(backend, closedPort) {
  const timeout = PROXY_TIMEOUT;
  return {
    client: { proxy: { connect: { enabled: true, endpoint: `http://127.0.0.1:${closedPort}/connect`, timeout } } },
    channel: {
      proxy: { subscribe: { endpoint: backend.endpoint('subscribe'), timeout } },
      namespaces: [{ name: 'proxied', subscribe_proxy_enabled: true }],
    },
    rpc: {
      proxy: { endpoint: `http://127.0.0.1:${closedPort}/rpc`, timeout },
      without_namespace: { proxy_enabled: true },
    },
  };
}

/** Subscribe stream proxies (gRPC only) through the named proxy 'stream': `streamed:*`
 *  unidirectional, `bidi:*` bidirectional. Connect is proxied too, so that the connect data
 *  {user} names the user the stream's request carries. */
export function streamProxyConfig(backend) {
  const timeout = PROXY_TIMEOUT;
  const stream = { subscribe_stream_proxy_enabled: true, subscribe_stream_proxy_name: 'stream' };
  return {
    client: { proxy: { connect: { enabled: true, endpoint: backend.endpoint('connect'), timeout } } },
    proxies: [{ name: 'stream', endpoint: backend.endpoint('subscribe_stream'), timeout }],
    channel: {
      namespaces: [
        { name: 'streamed', ...stream },
        { name: 'bidi', ...stream, subscribe_stream_proxy_bidirectional: true },
      ],
    },
  };
}

/** Matches the gRPC backend's stream records of one subscriber's streams. */
export function streamOf(channel, clientId) {
  return c => c.stream !== undefined && c.stream.channel === channel && c.stream.client === clientId;
}

// ---------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------

/** A client without a token (so the connect proxy decides) sending `data` on connect. */
export function proxyClient(server, proto, data, options = {}) {
  return newClient(server, proto, { data: proto.encode(data), ...options });
}

/**
 * A WebSocket class for the SDK's `websocket` option that sets real HTTP headers on the
 * upgrade request (ws's `headers` option) and records every close frame it receives into
 * `closes` as {code, reason}.
 */
export function websocketWithHeaders(headers, closes = []) {
  return class HeaderWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, { headers });
      this.on('close', (code, reason) => closes.push({ code, reason: reason.toString() }));
    }
  };
}

/** Open file descriptors of a process (Linux /proc); null where /proc is missing. */
export function fdCount(pid) {
  const dir = `/proc/${pid}/fd`;
  return existsSync(dir) ? readdirSync(dir).length : null;
}

// ---------------------------------------------------------------------------------------
// What centrifuge-js 5.8.0 shows (build/index.mjs, checked against its source):
//  * connect reply with an error whose code is < 100, or temporary (100 "internal server
//    error" is sent temporary), or 109: 'error' {type: 'connect', error: {code, message,
//    temporary}}; the client stays 'connecting' and retries (_connectError).
//  * connect reply with any other error (4001): no 'error' event, 'disconnected' {code,
//    reason: message} and no retry (_connectError -> _disconnect(code, message, false)).
//  * close frame 3500-3999 / 4500-4999 (3501, 4501, 4502): 'disconnected' {code, reason}.
//  * other close frames >= 3000 (3005, 4403, 4444) reconnect: from 'connected' the SDK emits
//    'connecting' {code, reason}. While still 'connecting' there is no state event (the
//    state does not change), only 'error' {type: 'connect', error: {code: 11, message:
//    'connection closed'}} for the pending connect command, so the close code itself is
//    visible only on the WebSocket (websocketWithHeaders records it).
//  * a failed call (rpc, publish) rejects with {code, message, temporary}.
//  * subscribe reply with a temporary error (100): the subscription's 'error' {type:
//    'subscribe', error: {code, message, temporary}}, then it subscribes again by itself (no
//    'unsubscribed'); another error (103): 'unsubscribed' {code, reason: message}.
//  * unsubscribe push: code < 2500 (2000) -> 'unsubscribed' {code, reason}; code >= 2500
//    (2500) -> 'subscribing' {code, reason}, then it subscribes again by itself.
// ---------------------------------------------------------------------------------------

/** Connect and expect the server's internal error (100) as a temporary connect error.
 *  Returns the ms from connect() to that error. The client is closed afterwards (it would
 *  retry against the same backend forever). */
export async function expectConnectInternalError(client, timeoutMs = 5000) {
  // A 'disconnected' first means the SDK saw a permanent error (e.g. 100 not temporary).
  const outcome = new Promise(resolve => {
    client.on('error', ctx => { if (ctx.type === 'connect') resolve({ error: ctx.error }); });
    client.on('disconnected', ctx => resolve({ disconnected: ctx }));
    client.on('connected', ctx => resolve({ connected: ctx }));
  });
  const started = Date.now();
  client.connect();
  let first, elapsed, state;
  try {
    first = await withTimeout(outcome, timeoutMs, 'a connect error');
    elapsed = Date.now() - started;
    state = client.state;
  } finally {
    closeAll(client);
  }
  assert.equal(first.connected, undefined, 'connected although the backend failed (no proxy timeout?)');
  assert.equal(first.disconnected, undefined, `disconnected instead of a temporary connect error: ${JSON.stringify(first.disconnected)}`);
  assert.equal(first.error.code, 100, `connect error: ${JSON.stringify(first.error)}`);
  assert.equal(first.error.message, 'internal server error');
  assert.equal(first.error.temporary, true, 'code 100 is a temporary error: the SDK retries');
  assert.equal(state, 'connecting', 'the SDK keeps trying after a temporary connect error');
  return elapsed;
}

/** Connect and expect a terminal 'disconnected' {code, reason} (no retry). */
export async function expectConnectDisconnected(client, code, reason, timeoutMs = 5000) {
  const outcome = new Promise(resolve => {
    client.on('disconnected', ctx => resolve({ disconnected: ctx }));
    client.on('connected', ctx => resolve({ connected: ctx }));
    client.on('error', ctx => { if (ctx.type === 'connect') resolve({ error: ctx.error }); });
  });
  client.connect();
  const first = await withTimeout(outcome, timeoutMs, `disconnect ${code}`);
  assert.ok(first.disconnected, `expected disconnected ${code} "${reason}", got ${JSON.stringify(first)}`);
  assert.deepEqual({ code: first.disconnected.code, reason: first.disconnected.reason }, { code, reason });
  assert.equal(client.state, 'disconnected');
}

/** Expect `promise` (an rpc/publish) to reject with {code, message}; returns elapsed ms. */
export async function expectCallError(promise, code, message) {
  const started = Date.now();
  await assert.rejects(promise, err => {
    assert.deepEqual({ code: err.code, message: err.message }, { code, message }, JSON.stringify(err));
    return true;
  }, `the call succeeded; expected error ${code} "${message}"`);
  return Date.now() - started;
}

/** Record the client's state events (connecting/disconnected/connected) from now on. */
export function stateEvents(client) {
  const events = [];
  for (const name of ['connecting', 'connected', 'disconnected']) {
    client.on(name, ctx => events.push({ event: name, code: ctx.code, reason: ctx.reason }));
  }
  return events;
}
