// Shared harness for the Spinwire Node interop suite.
//
// Starts the server under test with a Centrifugo v6 JSON config, mints HS256 JWTs with
// node:crypto, talks to the HTTP server API with fetch, and offers small wait helpers
// (every wait has an explicit timeout; nothing sleeps in place of an assertion).

import { spawn } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync, rmSync, existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import WebSocket from 'ws';
import { Centrifuge as CentrifugeJson } from 'centrifuge';
import { Centrifuge as CentrifugeProtobuf } from 'centrifuge/build/protobuf';

export { WebSocket };

const here = dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = resolve(here, '..', '..', '..');
export const SPINWIRE_BIN = process.env.SPINWIRE_BIN || join(REPO_ROOT, 'target', 'debug', 'spinwire');

export const READY_TIMEOUT_MS = 20000;

// ---------------------------------------------------------------------------------------
// Ports and config
// ---------------------------------------------------------------------------------------

/** A free TCP port on 127.0.0.1 (bind port 0, read it, close). */
export function freePort() {
  return new Promise((resolvePort, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolvePort(port));
    });
  });
}

function isPlainObject(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** Deep merge (objects merge, arrays and scalars replace). */
export function deepMerge(base, extra) {
  if (!isPlainObject(base) || !isPlainObject(extra)) {
    return extra === undefined ? base : extra;
  }
  const out = { ...base };
  for (const [k, v] of Object.entries(extra)) {
    out[k] = k in base ? deepMerge(base[k], v) : v;
  }
  return out;
}

/**
 * Namespaces used by the SDK scenarios. Every option name is a Centrifugo v6 channel
 * option (configtypes/namespace.go).
 */
export const NAMESPACES = [
  // Plain subscribe-only namespace (scenario 1).
  { name: 'news', allow_subscribe_for_client: true },
  // Chat: subscribers may publish, read presence and history; join/leave pushed to all.
  {
    name: 'chat',
    allow_subscribe_for_client: true,
    allow_publish_for_subscriber: true,
    presence: true,
    allow_presence_for_subscriber: true,
    join_leave: true,
    force_push_join_leave: true,
    history_size: 10,
    history_ttl: '300s',
    allow_history_for_subscriber: true,
  },
  // Recovery namespace (scenario 9).
  {
    name: 'rec',
    allow_subscribe_for_client: true,
    history_size: 100,
    history_ttl: '300s',
    force_recovery: true,
    allow_history_for_subscriber: true,
  },
  // A namespace that allows nothing (scenario 7: 103 permission denied).
  { name: 'locked' },
];

/** Base config for the node suite; `extra` is deep-merged on top. */
export function makeConfig({ port, secret, apiKey }, extra = {}) {
  const base = {
    http_server: { port },
    log: { level: 'info' },
    client: {
      token: { hmac_secret_key: secret },
      recovery_max_publication_limit: 10,
    },
    http_api: { key: apiKey },
    health: { enabled: true },
    channel: { namespaces: NAMESPACES },
  };
  return deepMerge(base, extra);
}

// ---------------------------------------------------------------------------------------
// Server process
// ---------------------------------------------------------------------------------------

const MAX_LOG = 256 * 1024;

class ServerHandle {
  constructor({ port, secret, apiKey, config, dir }) {
    this.port = port;
    this.secret = secret;
    this.apiKey = apiKey;
    this.config = config;
    this.dir = dir;
    this.proc = null;
    this.log = '';
    this.failed = false;
    this.exited = null; // {code, signal} once the process exited
    this.stderr = ''; // tail of stderr only (panic detection)
    this.panicked = false; // "panicked" seen on stderr at any time
    this.expectExit = false; // set by signal(): the test itself stops the process
  }

  get wsUrl() {
    return `ws://127.0.0.1:${this.port}/connection/websocket`;
  }

  /** Port of the plain-HTTP listener for the API and health: the internal one when the
   *  config moves them there (e.g. TLS on the external port with `tls_external`). */
  get apiPort() {
    return this.config.http_server.internal_port || this.port;
  }

  get apiUrl() {
    return `http://127.0.0.1:${this.apiPort}/api`;
  }

  get healthUrl() {
    return `http://127.0.0.1:${this.apiPort}/health`;
  }

  _append(chunk) {
    this.log += chunk.toString();
    if (this.log.length > MAX_LOG) {
      this.log = this.log.slice(this.log.length - MAX_LOG);
    }
  }

  _appendStderr(chunk) {
    // Scan the previous tail too: "panicked" may be split across two chunks.
    const text = chunk.toString();
    const window = this.stderr.slice(-16) + text;
    if (window.includes('panicked')) this.panicked = true;
    this.stderr += text;
    if (this.stderr.length > MAX_LOG) {
      this.stderr = this.stderr.slice(this.stderr.length - MAX_LOG);
    }
  }

  /** True while the server process has not exited. */
  get alive() {
    return this.proc !== null && this.exited === null && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /**
   * Assert the process is still running, has not panicked, and still answers
   * GET /health with 200. For the end of bad-input tests.
   */
  async assertAlive(what = 'server') {
    if (!this.alive) {
      this.markFailed();
      throw new Error(`${what}: server process exited: ${JSON.stringify(this.exited)}`);
    }
    this.assertNoPanic(what);
    const res = await fetch(this.healthUrl, { signal: AbortSignal.timeout(3000) });
    await res.arrayBuffer();
    if (res.status !== 200) {
      this.markFailed();
      throw new Error(`${what}: GET /health answered ${res.status}`);
    }
  }

  /** Throw (and mark the log for printing) if the server's stderr contains "panicked". */
  assertNoPanic(what = 'server') {
    if (this.panicked) {
      this.markFailed();
      throw new Error(`${what}: server stderr contains "panicked" (log printed at stop)`);
    }
  }

  /** Send a signal to the server process (e.g. 'SIGTERM'). */
  signal(sig) {
    this.expectExit = true;
    if (this.proc && this.exited === null) this.proc.kill(sig);
  }

  /** Resolve with {code, signal} when the process exits; reject after timeoutMs. */
  waitForExit(timeoutMs) {
    if (this.exited) return Promise.resolve(this.exited);
    const proc = this.proc;
    return withTimeout(new Promise(r => proc.once('exit', (code, signal) => r({ code, signal }))),
      timeoutMs, `server process exit (port ${this.port})`);
  }

  markFailed() {
    this.failed = true;
  }

  async stop() {
    // Clients left connected would keep reconnecting (and the test process alive).
    closeAll(...createdClients.splice(0));
    const proc = this.proc;
    // Exited before stop() without a test asking for it (signal()): a crash.
    const crashed = proc !== null && this.exited !== null && !this.expectExit;
    if (crashed) this.failed = true;
    if (proc && this.exited === null) {
      const exited = new Promise(r => proc.once('exit', r));
      proc.kill('SIGTERM');
      const timer = setTimeout(() => {
        if (this.exited === null) proc.kill('SIGKILL');
      }, 5000);
      await exited;
      clearTimeout(timer);
    }
    // A panic anywhere in the server (even one it survived, e.g. in a spawned task)
    // fails the run: the after() hook that calls stop() throws.
    const panicked = this.panicked;
    if (panicked) this.failed = true;
    if (this.failed) {
      console.error(`\n===== spinwire log (port ${this.port}, config ${this.dir}/config.json) =====\n` +
        `${this.log || '(empty)'}\n===== end of spinwire log =====`);
    }
    if (this.dir && !this.failed) {
      rmSync(this.dir, { recursive: true, force: true });
    }
    if (crashed && !panicked) {
      throw new Error(`spinwire (port ${this.port}) exited unexpectedly: ${JSON.stringify(this.exited)}`);
    }
    if (panicked) {
      const lines = this.stderr.split('\n').filter(l => l.includes('panicked'));
      throw new Error(`spinwire (port ${this.port}) panicked: ${lines.slice(0, 5).join(' | ')}`);
    }
  }
}

/**
 * Start the server with the base config plus `extra` (deep-merged). Resolves when
 * GET /health answers 200; rejects with "server did not become ready" otherwise.
 * `shared` may fix `port`, `secret` and `apiKey` (cluster nodes, restarts on the same port),
 * `readyTimeoutMs` (for tests that expect the node never to become healthy) and `env` (extra
 * environment variables for the process; a value of `undefined` removes an inherited one).
 */
export async function startServer(extra = {}, shared = {}) {
  const port = shared.port || await freePort();
  // Nodes of one cluster share their secrets (`shared`): a token minted for one is valid on all.
  const secret = shared.secret || 'interop-secret-' + randomBytes(16).toString('hex');
  const apiKey = shared.apiKey || 'interop-api-key-' + randomBytes(8).toString('hex');
  const config = makeConfig({ port, secret, apiKey }, extra);
  const dir = mkdtempSync(join(tmpdir(), 'spinwire-node-'));
  const configPath = join(dir, 'config.json');
  writeFileSync(configPath, JSON.stringify(config, null, 2));

  const server = new ServerHandle({ port, secret, apiKey, config, dir });

  if (!existsSync(SPINWIRE_BIN)) {
    server.failed = true;
    server.log = `binary not found: ${SPINWIRE_BIN} (set SPINWIRE_BIN)`;
    await server.stop().catch(() => {});
    throw new Error(`server did not become ready: binary not found at ${SPINWIRE_BIN}`);
  }

  let spawnError = null;
  const proc = spawn(SPINWIRE_BIN, ['--config', configPath], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...(shared.env || {}) },
  });
  server.proc = proc;
  proc.stdout.on('data', c => server._append(c));
  proc.stderr.on('data', c => { server._append(c); server._appendStderr(c); });
  proc.on('error', e => { spawnError = e; });
  proc.on('exit', (code, signal) => { server.exited = { code, signal }; });

  const readyTimeoutMs = shared.readyTimeoutMs || READY_TIMEOUT_MS;
  const deadline = Date.now() + readyTimeoutMs;
  let lastErr = null;
  while (Date.now() < deadline) {
    if (spawnError) break;
    if (server.exited) break;
    try {
      const res = await fetch(server.healthUrl, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      if (res.status === 200) {
        return server;
      }
      lastErr = new Error(`health answered HTTP ${res.status}`);
    } catch (e) {
      lastErr = e;
    }
    await delay(100);
  }
  server.failed = true;
  const why = spawnError ? `spawn failed: ${spawnError.message}`
    : server.exited ? `process exited early (${JSON.stringify(server.exited)})`
    : `no 200 from ${server.healthUrl} within ${readyTimeoutMs} ms (last: ${lastErr && lastErr.message})`;
  await server.stop().catch(e => console.error(String(e)));
  throw new Error(`server did not become ready: ${why}`);
}

/**
 * Wrap a test body so that a failure marks the server (its log is printed at stop()).
 */
export function tracked(getServer, fn) {
  return async (t) => {
    try {
      await fn(t);
    } catch (e) {
      const s = getServer();
      if (s) s.markFailed();
      throw e;
    }
  };
}

// ---------------------------------------------------------------------------------------
// JWT (HS256) with node:crypto
// ---------------------------------------------------------------------------------------

function b64url(buf) {
  return Buffer.from(buf).toString('base64').replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');
}

export function signJwt(claims, secret, alg = 'HS256') {
  const algos = { HS256: 'sha256', HS384: 'sha384', HS512: 'sha512' };
  const header = b64url(JSON.stringify({ alg, typ: 'JWT' }));
  const payload = b64url(JSON.stringify(claims));
  const sig = createHmac(algos[alg], secret).update(`${header}.${payload}`).digest();
  return `${header}.${payload}.${b64url(sig)}`;
}

export function nowSec() {
  return Math.floor(Date.now() / 1000);
}

/** Connection token: claims sub (+ exp, default 1 h) and any extra claims. */
export function connToken(server, user, { ttl = 3600, exp, ...extra } = {}) {
  const claims = { sub: user, iat: nowSec(), exp: exp !== undefined ? exp : nowSec() + ttl, ...extra };
  return signJwt(claims, server.secret);
}

/** Subscription token: claims sub, channel, exp. */
export function subToken(server, user, channel, { ttl = 3600, ...extra } = {}) {
  const claims = { sub: user, channel, iat: nowSec(), exp: nowSec() + ttl, ...extra };
  return signJwt(claims, server.secret);
}

// ---------------------------------------------------------------------------------------
// Server HTTP API
// ---------------------------------------------------------------------------------------

/** POST /api/<method>; returns `result`, throws on HTTP != 200 or an `error` in the body. */
export async function api(server, method, body) {
  const res = await fetch(`${server.apiUrl}/${method}`, {
    method: 'POST',
    headers: { 'X-API-Key': server.apiKey, 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(5000),
  });
  const text = await res.text();
  if (res.status !== 200) {
    throw new Error(`API ${method}: HTTP ${res.status}: ${text}`);
  }
  const parsed = JSON.parse(text);
  if (parsed.error) {
    const err = new Error(`API ${method} error ${parsed.error.code}: ${parsed.error.message}`);
    err.code = parsed.error.code;
    throw err;
  }
  return parsed.result;
}

/** Raw POST to the API, for status-code checks. */
export async function apiRaw(server, path, { body, headers = {} } = {}) {
  const res = await fetch(`${server.apiUrl}${path}`, {
    method: 'POST',
    headers,
    body,
    signal: AbortSignal.timeout(5000),
  });
  const text = await res.text();
  return { status: res.status, text };
}

// ---------------------------------------------------------------------------------------
// SDK clients, JSON and Protobuf
// ---------------------------------------------------------------------------------------

const enc = new TextEncoder();
const dec = new TextDecoder();

/**
 * The two wire formats every SDK scenario runs with. `encode` turns a JS value into the
 * payload the SDK's publish expects; `decode` turns a received payload back into a value.
 */
export const PROTOCOLS = [
  {
    name: 'json',
    Centrifuge: CentrifugeJson,
    encode: v => v,
    decode: d => d,
  },
  {
    name: 'protobuf',
    Centrifuge: CentrifugeProtobuf,
    encode: v => enc.encode(JSON.stringify(v)),
    decode: d => {
      if (!(d instanceof Uint8Array)) {
        throw new Error(`protobuf payload is not bytes: ${typeof d}`);
      }
      return JSON.parse(dec.decode(d));
    },
  },
];

const createdClients = [];

/** New SDK client (not yet connected) with short timeouts and reconnect delays. */
export function newClient(server, proto, options = {}) {
  const client = new proto.Centrifuge(server.wsUrl, {
    websocket: WebSocket,
    name: 'spinwire-interop-node',
    timeout: 5000,
    minReconnectDelay: 100,
    maxReconnectDelay: 1000,
    ...options,
  });
  // An 'error' event with no listener would be harmless for EventEmitter subclasses
  // that don't special-case it, but keep a sink anyway (tests add their own).
  client.on('error', () => {});
  createdClients.push(client);
  return client;
}

/** Connect a client and wait for 'connected'; returns the connected context. */
export async function connectClient(client, timeoutMs = 5000) {
  const p = waitForEvent(client, 'connected', { timeoutMs });
  client.connect();
  return p;
}

/** Subscribe and wait for 'subscribed'; returns the subscribed context. */
export async function subscribeAndWait(sub, timeoutMs = 5000) {
  const p = waitForEvent(sub, 'subscribed', { timeoutMs });
  sub.subscribe();
  return p;
}

export function closeAll(...clients) {
  for (const c of clients) {
    try {
      if (c) c.disconnect();
    } catch (e) {
      // ignore
    }
  }
}

// ---------------------------------------------------------------------------------------
// Waiting helpers
// ---------------------------------------------------------------------------------------

export function delay(ms) {
  return new Promise(r => setTimeout(r, ms));
}

/** Resolve with the first `event` emitted by `emitter` whose args pass `filter`. */
export function waitForEvent(emitter, event, { timeoutMs = 5000, filter = () => true } = {}) {
  return new Promise((resolveEv, reject) => {
    const handler = (ctx, ...rest) => {
      let ok;
      try {
        ok = filter(ctx, ...rest);
      } catch (e) {
        cleanup();
        reject(e);
        return;
      }
      if (ok) {
        cleanup();
        resolveEv(ctx);
      }
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`timeout (${timeoutMs} ms) waiting for '${String(event)}' event`));
    }, timeoutMs);
    const cleanup = () => {
      clearTimeout(timer);
      emitter.off ? emitter.off(event, handler) : emitter.removeListener(event, handler);
    };
    emitter.on(event, handler);
  });
}

/** Record every `event` emitted from now on into an array. */
export function collect(emitter, event) {
  const items = [];
  emitter.on(event, ctx => items.push(ctx));
  return items;
}

/** Poll `predicate` until true; rejects after timeoutMs with `what` in the message. */
export async function waitFor(predicate, { timeoutMs = 5000, intervalMs = 20, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await predicate()) return;
    if (Date.now() >= deadline) {
      throw new Error(`timeout (${timeoutMs} ms) waiting for ${what}`);
    }
    await delay(intervalMs);
  }
}

/** Wait until `arr` holds at least n items; returns the first n. */
export async function waitForCount(arr, n, { timeoutMs = 5000, what = 'items' } = {}) {
  await waitFor(() => arr.length >= n, { timeoutMs, what: `${n} ${what} (have ${arr.length})` });
  return arr.slice(0, n);
}

/** A unique-ish suffix for channel/user names. */
export function uid(prefix = '') {
  return prefix + randomBytes(4).toString('hex');
}

// ---------------------------------------------------------------------------------------
// Raw WebSocket helper (JSON protocol unless told otherwise)
// ---------------------------------------------------------------------------------------

/**
 * Open a raw WebSocket. Returns { ws, messages, closed } where `messages` collects
 * parsed JSON replies (JSON protocol) or raw Buffers (binary), and `closed` resolves
 * with { code, reason } when the socket closes.
 */
export async function openRaw(server, { protocols, timeoutMs = 5000 } = {}) {
  const ws = protocols ? new WebSocket(server.wsUrl, protocols) : new WebSocket(server.wsUrl);
  const messages = [];
  const closed = new Promise(r => ws.on('close', (code, reason) => r({ code, reason: reason.toString() })));
  ws.on('message', (data, isBinary) => {
    if (isBinary) {
      messages.push(data);
      return;
    }
    for (const line of data.toString().split('\n')) {
      if (line.trim() !== '') messages.push(JSON.parse(line));
    }
  });
  ws.on('error', () => {});
  await new Promise((res, rej) => {
    const t = setTimeout(() => rej(new Error('raw websocket open timeout')), timeoutMs);
    ws.once('open', () => { clearTimeout(t); res(); });
    ws.once('unexpected-response', (_req, resp) => {
      clearTimeout(t);
      rej(new Error(`websocket upgrade rejected: HTTP ${resp.statusCode}`));
    });
    ws.once('error', e => { clearTimeout(t); rej(e); });
  });
  return { ws, messages, closed };
}

/** Resolve with the close info or reject after timeoutMs. */
export function withTimeout(promise, timeoutMs, what) {
  let timer;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise((_, rej) => {
      timer = setTimeout(() => rej(new Error(`timeout (${timeoutMs} ms) waiting for ${what}`)), timeoutMs);
    }),
  ]);
}
