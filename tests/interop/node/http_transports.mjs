// Helpers for the HTTP-based client transports (scenarios 14 and 15): SDK clients over the
// bidirectional emulation (`http_stream`, `sse` + `/emulation`), raw HTTP requests with full
// header control, and readers for the unidirectional streams (uni_websocket, uni_sse,
// uni_http_stream). Every wait has an explicit timeout, like the harness.

import { request as nodeHttpRequest } from 'node:http';

import { EventSource } from 'eventsource';

import { WebSocket, withTimeout } from './harness.mjs';

export { EventSource };

export const STREAM_TIMEOUT = 5000;

/** http://127.0.0.1:<port> of the server under test. */
export function httpBase(server) {
  return `http://127.0.0.1:${server.port}`;
}

export function wsBase(server) {
  return `ws://127.0.0.1:${server.port}`;
}

// ---------------------------------------------------------------------------------------
// SDK clients over the emulation transports
// ---------------------------------------------------------------------------------------

const emulationClients = [];

/**
 * New SDK client (not yet connected) that uses exactly one transport, `http_stream` or
 * `sse`, with the Node fetch/ReadableStream and the npm EventSource, and an absolute
 * emulation endpoint (Node has no document base URL to resolve a relative one).
 */
export function newEmulationClient(server, proto, transport, options = {}) {
  const client = new proto.Centrifuge([{ transport, endpoint: `${httpBase(server)}/connection/${transport}` }], {
    eventsource: EventSource,
    fetch: globalThis.fetch,
    readableStream: globalThis.ReadableStream,
    emulationEndpoint: `${httpBase(server)}/emulation`,
    name: 'spinwire-interop-node',
    timeout: 5000,
    minReconnectDelay: 100,
    maxReconnectDelay: 1000,
    ...options,
  });
  client.on('error', () => {});
  emulationClients.push(client);
  return client;
}

/** Disconnect every emulation client created so far (for after() hooks). */
export function closeEmulationClients() {
  for (const c of emulationClients.splice(0)) {
    try {
      c.disconnect();
    } catch (e) {
      // ignore
    }
  }
}

// ---------------------------------------------------------------------------------------
// Raw HTTP
// ---------------------------------------------------------------------------------------

/**
 * One HTTP/1.1 request with node:http (any method, any header, Origin included).
 * Resolves with { status, headers (lower-cased names), text } once the body has ended.
 */
export function rawHttp(url, { method = 'GET', headers = {}, body, timeoutMs = STREAM_TIMEOUT } = {}) {
  return new Promise((resolveRes, reject) => {
    const req = nodeHttpRequest(url, { method, headers, agent: false }, res => {
      const chunks = [];
      res.on('data', c => chunks.push(c));
      res.on('end', () => {
        clearTimeout(timer);
        resolveRes({ status: res.statusCode, headers: res.headers, text: Buffer.concat(chunks).toString() });
      });
      res.on('error', e => { clearTimeout(timer); reject(e); });
    });
    const timer = setTimeout(() => {
      req.destroy(new Error(`timeout (${timeoutMs} ms) waiting for ${method} ${url}`));
    }, timeoutMs);
    req.on('error', e => { clearTimeout(timer); reject(e); });
    if (body !== undefined) req.write(body);
    req.end();
  });
}

// ---------------------------------------------------------------------------------------
// Streamed HTTP responses (fetch)
// ---------------------------------------------------------------------------------------

/**
 * Open a streamed HTTP response with fetch and keep reading it. Returns
 * { res, status, headers, text(), jsonLines(), sseData(), ended, abort } where `ended`
 * resolves with 'end' when the server finished the body (or 'error'/'aborted').
 */
export async function openHttpStream(url, { method = 'POST', headers = {}, body, timeoutMs = STREAM_TIMEOUT } = {}) {
  const ac = new AbortController();
  let aborted = false;
  const res = await withTimeout(fetch(url, { method, headers, body, signal: ac.signal }), timeoutMs,
    `response headers of ${method} ${url}`);
  const decoder = new TextDecoder();
  let text = '';
  const ended = (async () => {
    if (!res.body) return 'end';
    const reader = res.body.getReader();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) {
          text += decoder.decode();
          return 'end';
        }
        text += decoder.decode(value, { stream: true });
      }
    } catch (e) {
      return aborted ? 'aborted' : 'error';
    }
  })();
  return {
    res,
    status: res.status,
    headers: res.headers,
    text: () => text,
    /** Complete `\n`-terminated lines, each parsed as JSON (blank lines skipped). */
    jsonLines: () => parseJsonLines(text),
    /** `data:` payloads of complete SSE events, each parsed as JSON. */
    sseData: () => parseSseData(text),
    ended,
    abort: () => {
      aborted = true;
      ac.abort();
    },
  };
}

function tryJson(s) {
  try {
    return JSON.parse(s);
  } catch (e) {
    return { __unparsable: s };
  }
}

export function parseJsonLines(text) {
  const lastNl = text.lastIndexOf('\n');
  if (lastNl < 0) return [];
  return text.slice(0, lastNl).split('\n').map(l => l.replace(/\r$/, '')).filter(l => l.trim() !== '').map(tryJson);
}

export function parseSseData(text) {
  const out = [];
  // Events end with a blank line; the trailing part after the last blank line is incomplete.
  const events = text.replace(/\r\n/g, '\n').split('\n\n');
  events.pop();
  for (const ev of events) {
    const data = ev.split('\n').filter(l => l.startsWith('data:')).map(l => l.slice(5).replace(/^ /, ''));
    if (data.length > 0) out.push(tryJson(data.join('\n')));
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Unidirectional clients
// ---------------------------------------------------------------------------------------

/** A Push is a ping when it has no fields at all (`{}`). */
export function isPing(push) {
  return push !== null && typeof push === 'object' && Object.keys(push).length === 0;
}

/** ConnectRequest as the url-encoded `cf_connect` query parameter. */
export function cfConnectQuery(connectRequest) {
  const text = typeof connectRequest === 'string' ? connectRequest : JSON.stringify(connectRequest);
  return `cf_connect=${encodeURIComponent(text)}`;
}

/**
 * EventSource (npm `eventsource`) on `url`. Returns { es, messages, raw, ended, opened() }:
 * `messages` are the JSON-parsed `data` of every message event, `ended` resolves with
 * { code, message } at the first error event (a failed request, or the stream ended), after
 * which the EventSource is closed so it does not reconnect.
 */
export function openEventSource(url) {
  const es = new EventSource(url);
  const messages = [];
  const raw = [];
  let opened = false;
  const ended = new Promise(resolveEnd => {
    es.onerror = e => {
      resolveEnd({ code: e.code, message: e.message });
      // After the handler returns, a stream end schedules a reconnect timer: close() on
      // the next turn clears it (closing inside the handler would leave it pending).
      setImmediate(() => es.close());
    };
  });
  es.onopen = () => { opened = true; };
  es.onmessage = e => {
    raw.push(e.data);
    messages.push(tryJson(e.data));
  };
  return { es, messages, raw, ended, opened: () => opened };
}

/**
 * Plain WebSocket to `url` (uni_websocket). Returns { ws, messages, frames, closed } once
 * open: `frames` are { binary, text } as received, `messages` the JSON Pushes (a text frame
 * may carry several `\n`-joined ones), `closed` resolves with { code, reason }. Resolves
 * with { rejected: status } instead when the upgrade is refused.
 */
export async function openUniWebSocket(url, { firstMessage, timeoutMs = STREAM_TIMEOUT } = {}) {
  const ws = new WebSocket(url);
  const messages = [];
  const frames = [];
  const closed = new Promise(r => ws.on('close', (code, reason) => r({ code, reason: reason.toString() })));
  ws.on('message', (data, isBinary) => {
    const text = data.toString();
    frames.push({ binary: isBinary, text });
    if (isBinary) return;
    for (const line of text.split('\n')) {
      if (line.trim() !== '') messages.push(tryJson(line));
    }
  });
  ws.on('error', () => {});
  const outcome = await new Promise((res, rej) => {
    const t = setTimeout(() => rej(new Error(`uni websocket open timeout: ${url}`)), timeoutMs);
    ws.once('open', () => { clearTimeout(t); res({}); });
    ws.once('unexpected-response', (_req, resp) => {
      clearTimeout(t);
      resp.resume();
      res({ rejected: resp.statusCode });
    });
    ws.once('error', e => { clearTimeout(t); rej(e); });
  });
  if (outcome.rejected !== undefined) {
    ws.terminate();
    return { rejected: outcome.rejected };
  }
  if (firstMessage !== undefined) ws.send(firstMessage);
  return { ws, messages, frames, closed };
}
