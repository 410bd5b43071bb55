// Scenario 16: the npm `centrifuge` browser build in headless Chromium (spec §2.1, §2.5).
// A page served from http://localhost connects (a) over WebSocket and (b) over WebTransport
// (HTTP/3) to a server whose certificate comes from `spinwire gencert` and is trusted only
// through `serverCertificateHashes`. Each client subscribes, receives a publication sent
// through the server API, shows it on the page, and the test asserts on the page text and
// keeps a screenshot. Raw WebTransport streams check bad input: garbage, an oversized message
// and a second stream end that session with 3501 while another browser client keeps receiving.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

import { startServer, tracked, connToken, api, uid, freePort, waitFor } from '../harness.mjs';
import { startPageServer, launchChromium, generateCertificate, ARTIFACTS } from '../browser.mjs';

const STEP_TIMEOUT = 15000;

/**
 * In the page: connect, subscribe, and log every event as a line of page text. With
 * `hashHex`, the SDK's `new WebTransport(url)` is made to trust the test certificate by hash
 * (the SDK passes no options of its own). It runs in the browser (see browser.mjs' page).
 */
async function connectAndSubscribe({ transport, endpoint, token, channel, hashHex, timeoutMs }) {
  if (hashHex) window.WebTransport = pinnedWebTransport(hashHex);
  const client = new Centrifuge([{ transport, endpoint }], { token });
  window.client = client;
  client.on('connected', ctx => show(`connected over ${ctx.transport}`));
  client.on('disconnected', ctx => show(`disconnected ${ctx.code} ${ctx.reason}`));
  client.on('connecting', ctx => { if (ctx.code !== 0) show(`connecting ${ctx.code} ${ctx.reason}`); });
  const sub = client.newSubscription(channel);
  // The Protobuf build hands data over as bytes (the JSON the API published).
  const decode = data => (data instanceof Uint8Array ? JSON.parse(new TextDecoder().decode(data)) : data);
  sub.on('publication', ctx => show(`received on ${ctx.channel}: ${decode(ctx.data).text}`));
  const subscribed = new Promise((resolve, reject) => {
    sub.once('subscribed', ctx => { show(`subscribed to ${ctx.channel}`); resolve(); });
    setTimeout(() => reject(new Error(`not subscribed within ${timeoutMs} ms`)), timeoutMs);
  });
  sub.subscribe();
  client.connect();
  await subscribed;
}

/**
 * In the page: a raw WebTransport session that writes `payload` on its stream and reads
 * until the server ends it. Returns the text received and how the session closed.
 */
async function rawSession({ url, hashHex, payload, secondStream, timeoutMs }) {
  const PinnedWebTransport = pinnedWebTransport(hashHex);
  const wt = new PinnedWebTransport(url);
  await wt.ready;
  const stream = await wt.createBidirectionalStream();
  const writer = stream.writable.getWriter();
  writer.write(typeof payload === 'string' ? new TextEncoder().encode(payload) : new Uint8Array(payload))
    .catch(() => {});
  if (secondStream) {
    const extra = await wt.createBidirectionalStream();
    extra.writable.getWriter().write(new TextEncoder().encode('\n')).catch(() => {});
  }
  const reader = stream.readable.getReader();
  const decoder = new TextDecoder();
  let text = '';
  const read = (async () => {
    try {
      for (;;) {
        const { done, value: chunk } = await reader.read();
        if (chunk) text += decoder.decode(chunk, { stream: true });
        if (done) return 'finished';
      }
    } catch (e) {
      return `read error: ${e}`;
    }
  })();
  const timer = new Promise(resolve => setTimeout(() => resolve('timeout'), timeoutMs));
  const streamEnd = await Promise.race([read, timer]);
  const closed = await Promise.race([
    wt.closed.then(info => `closed ${JSON.stringify(info)}`, e => `closed with error: ${e}`),
    new Promise(resolve => setTimeout(() => resolve('still open'), timeoutMs)),
  ]);
  return { text, streamEnd, closed };
}

describe('browser: npm centrifuge in headless Chromium', () => {
  let pages;
  let browser;
  let cert;
  let plain; // WebSocket, no TLS
  let secure; // HTTPS + HTTP/3 WebTransport on the external port, API on a plain internal port
  const current = () => secure || plain;

  before(async () => {
    mkdirSync(ARTIFACTS, { recursive: true });
    cert = generateCertificate();
    pages = await startPageServer();
    const origins = { client: { allowed_origins: [pages.origin] } };
    plain = await startServer(origins);
    secure = await startServer({
      ...origins,
      http_server: {
        internal_port: await freePort(),
        tls_external: true,
        tls: { enabled: true, cert_pem: cert.certPath, key_pem: cert.keyPath },
        http3: { enabled: true },
      },
      webtransport: { enabled: true },
    });
    browser = await launchChromium();
  });

  after(async () => {
    if (browser) await browser.close();
    if (pages) await pages.close();
    for (const server of [plain, secure]) if (server) await server.stop();
  });

  /** Opens the test page, runs the SDK flow, publishes through the API, checks the page. */
  async function receiveInPage(server, { transport, endpoint, hashHex, screenshot, protobuf = false }) {
    const page = await browser.newPage();
    const errors = [];
    page.on('pageerror', e => errors.push(String(e)));
    try {
      await page.goto(pages.origin + (protobuf ? '/?protobuf' : '/'));
      const channel = uid('news:browser_');
      const token = connToken(server, uid('user_'));
      await page.evaluate(connectAndSubscribe, {
        transport, endpoint, token, channel, hashHex, timeoutMs: STEP_TIMEOUT,
      });
      const text = `hello ${transport} ${uid()}`;
      await api(server, 'publish', { channel, data: { text } });
      await page.waitForFunction(
        expected => document.getElementById('log').textContent.includes(expected),
        `received on ${channel}: ${text}`,
        { timeout: STEP_TIMEOUT },
      );
      const path = join(ARTIFACTS, screenshot);
      await page.screenshot({ path, fullPage: true });
      const shown = await page.textContent('#log');
      assert.match(shown, new RegExp(`connected over ${transport}`), shown);
      assert.match(shown, new RegExp(`subscribed to ${channel}`), shown);
      assert.ok(shown.includes(`received on ${channel}: ${text}`), shown);
      assert.deepEqual(errors, []);
      console.log(`screenshot: ${path}`);
      return { page, channel };
    } catch (e) {
      await page.close();
      throw e;
    }
  }

  /** `receiveInPage` over WebTransport to the TLS server, trusting the test certificate. */
  function receiveOverWebTransport(screenshot, { protobuf = false } = {}) {
    return receiveInPage(secure, {
      transport: 'webtransport',
      endpoint: `https://localhost:${secure.port}/connection/webtransport`,
      hashHex: cert.sha256Hex,
      protobuf,
      screenshot,
    });
  }

  test('WebSocket: the browser build connects, subscribes and shows an API publication', tracked(current, async () => {
    const { page } = await receiveInPage(plain, {
      transport: 'websocket',
      endpoint: `ws://127.0.0.1:${plain.port}/connection/websocket`,
      screenshot: 'browser-websocket.png',
    });
    await page.close();
  }));

  test('WebTransport with serverCertificateHashes: connects over HTTP/3, subscribes and shows an API publication', tracked(current, async () => {
    const { page } = await receiveOverWebTransport('browser-webtransport.png');
    const info = await api(secure, 'info', {});
    assert.equal(info.nodes[0].num_clients, 1, JSON.stringify(info));
    await page.evaluate(() => window.client.disconnect());
    await page.close();
  }));

  test('WebTransport, Protobuf build: binary frames over the same stream', tracked(current, async () => {
    const { page } = await receiveOverWebTransport('browser-webtransport-protobuf.png', { protobuf: true });
    // The SDK's disconnect() closes the session; the server notices at once. (A page that
    // just goes away leaves its QUIC connection open in Chromium: pings find it, like any
    // vanished client, within ping_interval + pong_timeout.)
    await page.evaluate(() => window.client.disconnect());
    const started = Date.now();
    await waitFor(async () => (await api(secure, 'info', {})).nodes[0].num_clients === 0,
      { timeoutMs: STEP_TIMEOUT, what: 'the server to notice the closed session' });
    await page.close();
    console.log(`closed session noticed in ${Date.now() - started} ms`);
  }));

  test('WebTransport: garbage, an oversized message or a second stream end that session with 3501; another client keeps receiving', tracked(current, async () => {
    const { page: observer, channel } = await receiveOverWebTransport('browser-webtransport-observer.png');
    const raw = await browser.newPage();
    await raw.goto(pages.origin + '/');
    const url = `https://localhost:${secure.port}/connection/webtransport`;
    const oversized = 'x'.repeat(70000); // over webtransport.message_size_limit, no newline
    const cases = [
      ['garbage', 'this is not a command\n', false],
      ['oversized', oversized, false],
      ['a second stream in the session', '', true],
    ];
    for (const [what, payload, secondStream] of cases) {
      const outcome = await raw.evaluate(rawSession, {
        url, hashHex: cert.sha256Hex, payload, secondStream, timeoutMs: STEP_TIMEOUT,
      });
      const lines = outcome.text.split('\n').filter(l => l.trim() !== '');
      assert.ok(lines.length >= 1, `${what}: ${JSON.stringify(outcome)}`);
      const last = JSON.parse(lines[lines.length - 1]);
      assert.deepEqual(last, { push: { disconnect: { code: 3501, reason: 'bad request' } } },
        `${what}: ${JSON.stringify(outcome)}`);
      assert.notEqual(outcome.streamEnd, 'timeout', `${what}: the server ends the stream`);
      assert.notEqual(outcome.closed, 'still open', `${what}: the server ends the session`);
    }
    await raw.close();

    const text = `still here ${uid()}`;
    await api(secure, 'publish', { channel, data: { text } });
    await observer.waitForFunction(
      expected => document.getElementById('log').textContent.includes(expected),
      `received on ${channel}: ${text}`,
      { timeout: STEP_TIMEOUT },
    );
    await observer.close();
    await secure.assertAlive('after malformed WebTransport streams');
  }));

  test('WebTransport: server shutdown reaches the browser as 3001 and the process exits', tracked(current, async () => {
    const { page } = await receiveOverWebTransport('browser-webtransport-before-shutdown.png');
    secure.signal('SIGTERM');
    await page.waitForFunction(
      () => document.getElementById('log').textContent.includes('connecting 3001 shutdown'),
      null,
      { timeout: STEP_TIMEOUT },
    );
    const exited = await secure.waitForExit(STEP_TIMEOUT);
    assert.equal(exited.code, 0, JSON.stringify(exited));
    await page.close();
  }));
});
