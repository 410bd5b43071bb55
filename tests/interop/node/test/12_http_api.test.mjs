// Scenario 12: HTTP server API details: the legacy `POST /api` endpoint (newline-separated
// commands), `?api_key=` auth, the transport error mode header, and /api/batch with an
// unknown and a null command.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { startServer, tracked, apiRaw, uid } from '../harness.mjs';

describe('HTTP API', () => {
  let server;
  before(async () => { server = await startServer(); });
  after(async () => { if (server) await server.stop(); });

  test('legacy POST /api: one response line per command, id echoed', tracked(() => server, async () => {
    const body = `{"method":"publish","params":{"channel":"news:l","data":{"a":1}}}\n` +
      `{"id":7,"method":"history","params":{"channel":"nope:x"}}`;
    const res = await apiRaw(server, '', {
      body,
      headers: { 'X-API-Key': server.apiKey, 'Content-Type': 'application/json' },
    });
    assert.equal(res.status, 200, `legacy /api: ${res.status} ${res.text}`);
    const lines = res.text.split('\n').filter(l => l.trim() !== '');
    assert.equal(lines.length, 2, `two response lines expected: ${JSON.stringify(res.text)}`);
    const [first, second] = lines.map(l => JSON.parse(l));
    assert.equal(first.error, undefined, `publish: ${lines[0]}`);
    assert.deepEqual(first, { result: {} }, `publish to news (no history), no id: ${lines[0]}`);
    assert.equal(second.id, 7, lines[1]);
    assert.ok(second.error, lines[1]);
    assert.equal(second.error.code, 102, lines[1]);
    assert.equal(second.result, undefined, lines[1]);
  }));

  test('?api_key= query parameter authenticates', tracked(() => server, async () => {
    const ok = await apiRaw(server, `/publish?api_key=${encodeURIComponent(server.apiKey)}`, {
      body: JSON.stringify({ channel: `news:${uid('q-')}`, data: { a: 1 } }),
      headers: { 'Content-Type': 'application/json' },
    });
    assert.equal(ok.status, 200, `?api_key: ${ok.status} ${ok.text}`);
    assert.deepEqual(JSON.parse(ok.text), { result: {} });

    const wrong = await apiRaw(server, '/publish?api_key=wrong', {
      body: JSON.stringify({ channel: `news:${uid('q-')}`, data: { a: 1 } }),
      headers: { 'Content-Type': 'application/json' },
    });
    assert.equal(wrong.status, 401, `wrong ?api_key: ${wrong.status} ${wrong.text}`);
  }));

  test('X-Centrifugo-Error-Mode: transport -> HTTP 404 with the bare error for 102', tracked(() => server, async () => {
    const res = await apiRaw(server, '/publish', {
      body: JSON.stringify({ channel: 'nope:x', data: { a: 1 } }),
      headers: {
        'X-API-Key': server.apiKey,
        'Content-Type': 'application/json',
        'X-Centrifugo-Error-Mode': 'transport',
      },
    });
    assert.equal(res.status, 404, `transport error mode: ${res.status} ${res.text}`);
    assert.deepEqual(JSON.parse(res.text), { code: 102, message: 'unknown channel' });

    // Success in transport mode is the usual envelope.
    const ok = await apiRaw(server, '/publish', {
      body: JSON.stringify({ channel: `news:${uid('t-')}`, data: { a: 1 } }),
      headers: { 'X-API-Key': server.apiKey, 'X-Centrifugo-Error-Mode': 'transport' },
    });
    assert.equal(ok.status, 200, `${ok.status} ${ok.text}`);
    assert.deepEqual(JSON.parse(ok.text), { result: {} });
  }));

  test('/api/batch: publish, unknown command (104) and null command (107)', tracked(() => server, async () => {
    const channel = `news:${uid('batch-')}`;
    const res = await apiRaw(server, '/batch', {
      body: JSON.stringify({ commands: [{ publish: { channel, data: { a: 1 } } }, { nosuch: {} }, null] }),
      headers: { 'X-API-Key': server.apiKey, 'Content-Type': 'application/json' },
    });
    assert.equal(res.status, 200, `batch: ${res.status} ${res.text}`);
    const parsed = JSON.parse(res.text);
    assert.equal(parsed.result, undefined, 'batch has no result wrapper');
    assert.ok(Array.isArray(parsed.replies), res.text);
    assert.equal(parsed.replies.length, 3, res.text);
    const [pub, unknown, nul] = parsed.replies;
    assert.deepEqual(pub, { publish: {} }, `publish reply: ${JSON.stringify(pub)}`);
    assert.ok(unknown.error, `unknown command reply: ${JSON.stringify(unknown)}`);
    assert.equal(unknown.error.code, 104, `unknown command reply: ${JSON.stringify(unknown)}`);
    assert.ok(nul.error, `null command reply: ${JSON.stringify(nul)}`);
    assert.equal(nul.error.code, 107, `null command reply: ${JSON.stringify(nul)}`);
  }));
});
