#!/usr/bin/env node
// A Centrifugo HTTP proxy backend for the interop suites (node's `http`, no npm packages).
//
// Spinwire POSTs one JSON request per proxied event to /connect, /refresh, /subscribe,
// /publish, /rpc and /sub_refresh; the backend answers {"result": …}, {"error": …} or
// {"disconnect": …}. What it answers is chosen by the request (connect data, channel name,
// publish data, rpc method) so that a test picks the backend's behaviour by what its client
// sends; grpc_backend.py answers exactly the same way over gRPC.
//
// Every call is recorded (kind, path, parsed body, lower-cased request headers):
//   GET  /calls  -> JSON array of the calls so far
//   POST /reset  -> forget them
//   POST /lifecycle_fail?n=N -> answer the next N lifecycle batches (POST /lifecycle) with 503
//
// Usage: node http_backend.mjs [--port N] [--watch-stdin]
// Listens on 127.0.0.1 (port 0 unless --port) and prints one line {"port": N} on stdout.
// --watch-stdin: exit when stdin closes, so a test runner that dies leaves no backend behind.

import { createServer } from 'node:http';

const SLOW_MS = 3000; // well past the 500 ms proxy timeout of the tests' configs
const KINDS = new Set(['connect', 'refresh', 'subscribe', 'publish', 'rpc', 'sub_refresh', 'lifecycle']);

/** Lifecycle deliveries still to refuse with 503 (set by POST /lifecycle_fail?n=N). */
let lifecycleFailures = 0;

const calls = [];

const nowSec = () => Math.floor(Date.now() / 1000);
const result = r => ({ json: { result: r } });
const error = (code, message) => ({ json: { error: { code, message } } });
const disconnect = (code, reason) => ({ json: { disconnect: { code, reason } } });

// ---------------------------------------------------------------------------------------
// What the backend answers (kept in step with grpc_backend.py)
// ---------------------------------------------------------------------------------------

/** HTTP-level misbehaviours, picked by connect data `mode` or by the rpc method name. */
function misbehaviour(name) {
  switch (name) {
    case 'status500': return { status: 500, text: 'backend exploded' };
    case 'status403': return { status: 403, text: 'forbidden' };
    case 'garbage': return { status: 200, text: 'not json{' };
    case 'close': return { destroy: true };
    default: return null;
  }
}

/** The credentials for `user` (and an expiry when the client asked for a `ttl`). */
function credentials(user, ttl) {
  const r = { user, info: { name: user }, data: { welcome: user }, meta: { role: 'tester' } };
  if (typeof ttl === 'number') r.expire_at = nowSec() + ttl;
  return r;
}

function onConnect(body) {
  const data = isObject(body.data) ? body.data : {};
  const normal = () => result(credentials(typeof data.user === 'string' ? data.user : 'anonymous-backend', data.ttl));
  switch (data.mode) {
    case 'error': return error(4001, 'backend refused');
    case 'disconnect': return disconnect(4501, 'backend disconnect');
    case 'no_result': return { json: {} };
    case 'slow': return { delayMs: SLOW_MS, then: normal() };
    default: return misbehaviour(data.mode) || normal();
  }
}

function onRefresh(body) {
  if (body.user === 'expire-me') return result({ expired: true });
  return result({ expire_at: nowSec() + 60 });
}

function onSubscribe(body) {
  const channel = String(body.channel || '');
  const allowed = { info: { via: 'proxy' }, data: { hello: channel } };
  if (channel.startsWith('proxied:allowed-')) return result(allowed);
  if (channel.startsWith('proxied:short-')) return result({ ...allowed, expire_at: nowSec() + 2 });
  if (channel.startsWith('proxied:denied-')) return error(103, 'permission denied');
  if (channel.startsWith('proxied:kick-')) return disconnect(4502, 'subscribe kick');
  return error(103, 'permission denied');
}

function onPublish(body) {
  const data = isObject(body.data) ? body.data : {};
  if (data.reject === true) return error(4003, 'publish rejected');
  return result({ data: { ...data, rewritten: true } });
}

function onRpc(body) {
  switch (body.method) {
    case 'echo': return result({ data: { echo: body.data === undefined ? null : body.data } });
    case 'fail': return error(4500, 'rpc failed');
    case 'kick': return disconnect(4444, 'kicked');
    case 'slow': return { delayMs: SLOW_MS, then: result({ data: { slept: true } }) };
    default: return misbehaviour(body.method) || error(4404, 'unknown method');
  }
}

function onSubRefresh() {
  return result({ expire_at: nowSec() + 60 });
}

/** A batch of lifecycle events: acknowledged, unless told to fail the next ones. */
function onLifecycle() {
  if (lifecycleFailures > 0) {
    lifecycleFailures -= 1;
    return { status: 503, text: 'lifecycle store down' };
  }
  return { json: {} };
}

const HANDLERS = {
  lifecycle: onLifecycle,
  connect: onConnect,
  refresh: onRefresh,
  subscribe: onSubscribe,
  publish: onPublish,
  rpc: onRpc,
  sub_refresh: onSubRefresh,
};

// ---------------------------------------------------------------------------------------
// HTTP plumbing
// ---------------------------------------------------------------------------------------

function isObject(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', c => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function lowerHeaders(req) {
  const out = {};
  for (const [k, v] of Object.entries(req.headers)) out[k.toLowerCase()] = v;
  return out;
}

function sendJson(res, status, value) {
  const body = JSON.stringify(value);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

/** Carry out an answer: JSON, a bare status/text, a dropped socket, or any of them later. */
function perform(req, res, answer) {
  if (answer.delayMs) {
    setTimeout(() => perform(req, res, answer.then), answer.delayMs);
    return;
  }
  if (res.destroyed || res.writableEnded) return; // the caller gave up (its timeout)
  if (answer.destroy) {
    req.socket.destroy();
    return;
  }
  if (answer.json !== undefined) {
    sendJson(res, 200, answer.json);
    return;
  }
  res.writeHead(answer.status, { 'Content-Type': 'text/plain' });
  res.end(answer.text);
}

async function handle(req, res) {
  const path = new URL(req.url, 'http://backend').pathname;
  if (req.method === 'GET' && path === '/calls') {
    sendJson(res, 200, calls);
    return;
  }
  if (req.method === 'POST' && path === '/reset') {
    await readBody(req);
    calls.length = 0;
    sendJson(res, 200, {});
    return;
  }
  if (req.method === 'POST' && path === '/lifecycle_fail') {
    await readBody(req);
    lifecycleFailures = Number(new URL(req.url, 'http://backend').searchParams.get('n') || 0);
    sendJson(res, 200, {});
    return;
  }
  const raw = await readBody(req);
  const kind = path.replace(/^\//, '');
  let body;
  let parseError;
  try {
    body = JSON.parse(raw);
  } catch (e) {
    parseError = String(e);
  }
  // Recorded before answering, so a call the server timed out on is still visible.
  calls.push({
    kind: KINDS.has(kind) ? kind : 'unknown',
    path,
    method: req.method,
    body: parseError === undefined ? body : raw,
    ...(parseError === undefined ? {} : { parse_error: parseError }),
    headers: lowerHeaders(req),
    at: Date.now(),
  });
  if (req.method !== 'POST' || !KINDS.has(kind)) {
    sendJson(res, 404, { error: `no such endpoint: ${req.method} ${path}` });
    return;
  }
  if (parseError !== undefined || !isObject(body)) {
    sendJson(res, 400, { error: `request body is not a JSON object: ${parseError || typeof body}` });
    return;
  }
  perform(req, res, HANDLERS[kind](body));
}

function parseArgs(argv) {
  const args = { port: 0, watchStdin: false };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--port') args.port = Number(argv[++i]);
    else if (argv[i] === '--watch-stdin') args.watchStdin = true;
    else throw new Error(`unknown argument: ${argv[i]}`);
  }
  return args;
}

const args = parseArgs(process.argv.slice(2));
const server = createServer((req, res) => {
  handle(req, res).catch(e => {
    if (!res.headersSent) sendJson(res, 500, { error: `backend bug: ${e && e.stack}` });
    else res.destroy();
  });
});
// A client that resets mid-request must not take the backend down.
server.on('clientError', (_e, socket) => socket.destroy());
server.listen(args.port, '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n');
});

if (args.watchStdin) {
  process.stdin.resume();
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
}
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
