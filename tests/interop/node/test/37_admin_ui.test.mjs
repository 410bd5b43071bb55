// Scenario 37: the admin web UI on the internal port. Over plain HTTP: Centrifugo's admin
// endpoints (/admin/init, /admin/auth, /admin/api) with token auth, 401 for a missing or bad
// token (the server API key does not open it), 405 for GET, 404 on the external port, and the
// page's Content-Security-Policy. In headless Chromium: sign in (a wrong password first), the
// nodes view with its live connections chart, the channels list with an npm `centrifuge`
// subscriber, the channel view (presence, history), the publish console (the SDK receives the
// data), unsubscribe and disconnect from the actions view, log out, and an expired token
// sending the page back to the login. Any console error or page error (CSP violations show up
// there) fails the test, except the HTTP errors the test causes on purpose. With
// `admin.insecure` the page opens without a login and the API needs no token.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

import {
  PROTOCOLS, startServer, tracked, freePort, newClient, connectClient, connToken, subscribeAndWait,
  waitForEvent, waitFor, collect, api, uid, closeAll,
} from '../harness.mjs';
import { launchChromium, ARTIFACTS } from '../browser.mjs';

const STEP = 15000;
const [JSON_PROTOCOL] = PROTOCOLS;
const CONSOLE_TEXT = { text: 'from the admin console' };

async function startAdminServer(admin) {
  const internalPort = await freePort();
  return startServer({ admin: { enabled: true, ...admin }, http_server: { internal_port: String(internalPort) } });
}

/** A URL on the internal port, where the admin UI is served (no handler prefix). */
const adminUrl = (server, path = '') => `http://127.0.0.1:${server.apiPort}/${path}`;
const externalUrl = (server, path = '') => `http://127.0.0.1:${server.port}/${path}`;

async function request(url, { method = 'GET', headers = {}, body } = {}) {
  const res = await fetch(url, { method, headers, body, signal: AbortSignal.timeout(5000) });
  const text = await res.text();
  return { status: res.status, headers: res.headers, text };
}

function adminApi(server, token, method, params = {}, headers = {}) {
  return request(adminUrl(server, 'admin/api'), {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...(token ? { Authorization: `token ${token}` } : {}), ...headers },
    body: JSON.stringify({ method, params }),
  });
}

function adminInit(server, token) {
  return request(adminUrl(server, 'admin/init'), { headers: token ? { Authorization: `token ${token}` } : {} });
}

function adminAuth(server, password) {
  return request(adminUrl(server, 'admin/auth'), { method: 'POST', body: new URLSearchParams({ password }) });
}

/** Collects console errors and page errors. */
function watchPage(page) {
  const errors = [];
  page.on('console', msg => {
    if (msg.type() === 'error') errors.push({ text: msg.text(), url: msg.location().url || '' });
  });
  page.on('pageerror', e => errors.push({ text: `pageerror: ${e.message}`, url: '' }));
  return errors;
}

/** Errors other than the HTTP error responses the test causes on purpose: Chromium logs
 *  every one as "Failed to load resource: the server responded with a status of N", with the
 *  resource's URL as the location. `expected` holds [status, path] pairs. */
function unexpectedErrors(errors, expected) {
  return errors.filter(e => !expected.some(([status, path]) =>
    e.text.startsWith('Failed to load resource') && e.text.includes(`status of ${status}`) && e.url.endsWith(path)));
}

async function shot(page, name) {
  const path = join(ARTIFACTS, name);
  await page.screenshot({ path, fullPage: true });
  console.log(`screenshot: ${path}`);
}

/** Waits until `selector`'s text is `expected` (trimmed); the error says what it showed. */
async function waitText(page, selector, expected, what) {
  try {
    await page.waitForFunction(([sel, want]) => {
      const node = document.querySelector(sel);
      return node !== null && node.textContent.trim() === want;
    }, [selector, expected], { timeout: STEP });
  } catch (e) {
    const shown = await page.evaluate(sel => document.querySelector(sel)?.textContent ?? null, selector);
    throw new Error(`${what}: ${selector} shows ${JSON.stringify(shown)}, expected ${JSON.stringify(expected)}`);
  }
}

async function visible(page, selector) {
  await page.waitForSelector(selector, { state: 'visible', timeout: STEP });
}

async function signIn(page, password) {
  await visible(page, '#login-password');
  await page.fill('#login-password', password);
  await page.click('#login-submit');
  await visible(page, '[data-testid=node-card]');
}

describe('admin UI with a password', () => {
  const password = `admin-pass-${uid()}`;
  let server;
  let browser;

  before(async () => {
    mkdirSync(ARTIFACTS, { recursive: true });
    server = await startAdminServer({ password, secret: `admin-secret-${uid()}` });
    browser = await launchChromium();
  });

  after(async () => {
    if (browser) await browser.close();
    if (server) await server.stop();
  });

  test('HTTP: init, auth, token-only API, methods, the external port, the CSP', tracked(() => server, async () => {
    const anonymous = await adminInit(server);
    assert.equal(anonymous.status, 200, anonymous.text);
    const init = JSON.parse(anonymous.text);
    assert.equal(init.authenticated, false);
    assert.equal(init.insecure, false);
    assert.equal(init.edition, 'oss');

    const guessed = Date.now();
    assert.equal((await adminAuth(server, 'wrong-password')).status, 400);
    assert.ok(Date.now() - guessed >= 450, 'a failed login answers after its delay (2 guesses a second at most)');
    assert.equal((await adminAuth(server, '')).status, 400);
    const auth = await adminAuth(server, password);
    assert.equal(auth.status, 200, auth.text);
    const { token } = JSON.parse(auth.text);
    assert.equal(typeof token, 'string');
    assert.ok(token.length > 0);
    // The browser's FormData (multipart) works as well as a urlencoded form.
    const form = new FormData();
    form.append('password', password);
    const multipart = await request(adminUrl(server, 'admin/auth'), { method: 'POST', body: form });
    assert.equal(multipart.status, 200, multipart.text);
    assert.equal(typeof JSON.parse(multipart.text).token, 'string');

    const signedIn = await adminInit(server, token);
    assert.equal(signedIn.status, 200);
    assert.equal(JSON.parse(signedIn.text).authenticated, true);
    assert.equal(JSON.parse((await adminInit(server, 'garbage')).text).authenticated, false);

    const noToken = await adminApi(server, null, 'info');
    assert.equal(noToken.status, 401);
    assert.equal(noToken.text, '');
    assert.equal((await adminApi(server, 'garbage', 'info')).status, 401);
    assert.equal((await adminApi(server, `${token}x`, 'info')).status, 401);
    // The server API key is not an admin token.
    assert.equal((await adminApi(server, null, 'info', {}, { 'X-API-Key': server.apiKey })).status, 401);

    const info = await adminApi(server, token, 'info');
    assert.equal(info.status, 200, info.text);
    const { result } = JSON.parse(info.text);
    assert.equal(result.nodes.length, 1, info.text);
    assert.equal(typeof result.nodes[0].uid, 'string');

    // An error comes back as Centrifugo's error object: `news` keeps no history.
    const history = await adminApi(server, token, 'history', { channel: uid('news:admin_'), limit: 20, reverse: true });
    assert.equal(history.status, 200, history.text);
    assert.equal(JSON.parse(history.text).error.code, 108, history.text);

    const get = await request(adminUrl(server, 'admin/api'), { headers: { Authorization: `token ${token}` } });
    assert.equal(get.status, 405);

    const page = await request(adminUrl(server));
    assert.equal(page.status, 200);
    assert.match(page.headers.get('content-type'), /^text\/html/);
    const csp = page.headers.get('content-security-policy');
    assert.ok(csp, 'the page carries a Content-Security-Policy');
    assert.ok(csp.includes("frame-ancestors 'none'"), csp);
    assert.ok(csp.includes("script-src 'self'"), csp);
    assert.match(page.text, /<script src="app\.js"/);
    const script = await request(adminUrl(server, 'app.js'));
    assert.equal(script.status, 200);
    assert.match(script.headers.get('content-type'), /javascript/);
    const style = await request(adminUrl(server, 'app.css'));
    assert.equal(style.status, 200);
    assert.match(style.headers.get('content-type'), /^text\/css/);

    for (const path of ['', 'app.js', 'admin/init']) {
      const external = await request(externalUrl(server, path));
      assert.equal(external.status, 404, `external port /${path}`);
    }
    const externalApi = await request(externalUrl(server, 'admin/api'), {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Authorization: `token ${token}` },
      body: JSON.stringify({ method: 'info', params: {} }),
    });
    assert.equal(externalApi.status, 404, 'external port /admin/api');
  }));

  test('browser: sign in, nodes, channels, channel, publish, actions, log out, expiry', tracked(() => server, async () => {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const errors = watchPage(page);
    const expected = [[400, '/admin/auth']];
    // Markup in the user id: the page must show it as text (innerHTML would make an element,
    // change the text, and trip the CSP on the handler).
    const user = `<img src="x" onerror="window.pwned = 1">${uid('admin-ui-user-')}`;
    const channel = uid('chat:admin_ui_');
    let client = null;
    try {
      // Login: a wrong password first.
      await page.goto(adminUrl(server));
      await visible(page, '#login-password');
      assert.equal(await page.isVisible('#app-view'), false);
      await page.fill('#login-password', 'not-the-password');
      await page.click('#login-submit');
      await visible(page, '#login-error');
      assert.match(await page.textContent('#login-error'), /wrong password/i);
      assert.equal(await page.isVisible('#app-view'), false);
      await shot(page, 'admin-login-error.png');

      // The right one: the nodes view.
      await signIn(page, password);
      const [node] = (await api(server, 'info', {})).nodes;
      await waitText(page, '[data-testid=node-name]', node.name || '(unnamed)', 'the node card names the node');
      assert.equal(await page.getAttribute('[data-testid=node-card]', 'data-uid'), node.uid);
      await waitText(page, '[data-testid=node-clients]', '0', 'no clients yet');
      const storage = await page.evaluate(() => ({
        session: Object.keys(sessionStorage).length, local: localStorage.length, cookie: document.cookie,
      }));
      assert.deepEqual(storage, { session: 1, local: 0, cookie: '' }, 'the token lives in sessionStorage only');
      await shot(page, 'admin-nodes.png');

      // An SDK subscriber.
      client = newClient(server, JSON_PROTOCOL, { token: connToken(server, user) });
      const connected = await connectClient(client);
      const sub = client.newSubscription(channel);
      await subscribeAndWait(sub);
      const received = collect(sub, 'publication');

      // Channels: the list, the filter.
      await page.click('#nav-channels');
      await visible(page, '#view-channels');
      await page.waitForFunction(ch => [...document.querySelectorAll('[data-testid=channel-row]')].some(row =>
        row.querySelector('[data-testid=channel-name]').textContent === ch
        && row.querySelector('[data-testid=channel-clients]').textContent === '1'), channel, { timeout: STEP });
      await page.fill('#channels-filter', 'no-such-channel');
      await visible(page, '#channels-empty');
      assert.equal(await page.locator('[data-testid=channel-row]').count(), 0);
      await page.fill('#channels-filter', channel.slice(-8));
      await page.waitForFunction(() => document.querySelectorAll('[data-testid=channel-row]').length === 1, null,
        { timeout: STEP });
      assert.equal(await page.textContent('[data-testid=channel-row] [data-testid=channel-name]'), channel);
      assert.equal(await page.textContent('[data-testid=channel-row] [data-testid=channel-clients]'), '1');
      await shot(page, 'admin-channels.png');

      // The channel: presence and its stats, an empty history.
      await page.locator('[data-testid=channel-row]', { hasText: channel }).locator('[data-testid=channel-link]').click();
      await visible(page, '#view-channel');
      await waitText(page, '#channel-name', channel, 'the channel view names the channel');
      await waitText(page, '[data-testid=presence-user]', user, 'presence lists the SDK user');
      assert.equal(await page.textContent('[data-testid=presence-client]'), connected.client);
      assert.equal(await page.locator('[data-testid=presence-row]').count(), 1);
      assert.equal(await page.locator('#presence-body img').count(), 0, 'presence is rendered as text');
      await waitText(page, '#channel-num-clients', '1', 'presence stats: clients');
      await waitText(page, '#channel-num-users', '1', 'presence stats: users');
      await visible(page, '#history-empty');

      // Publish from the channel's shortcut: invalid JSON is refused in the page, valid
      // JSON reaches the SDK subscriber exactly.
      await page.click('#channel-publish');
      await visible(page, '#view-publish');
      assert.equal(await page.inputValue('#publish-channel'), channel);
      await page.fill('#publish-data', '{"text": oops}');
      await page.click('#publish-submit');
      await visible(page, '#publish-result[data-state=invalid]');
      assert.match(await page.textContent('#publish-result'), /invalid json/i);
      await page.fill('#publish-data', JSON.stringify(CONSOLE_TEXT, null, 2));
      const delivered = waitForEvent(sub, 'publication', { timeoutMs: STEP });
      await page.click('#publish-submit');
      const publication = await delivered;
      assert.deepEqual(publication.data, CONSOLE_TEXT);
      await visible(page, '#publish-result[data-state=ok]');
      assert.match(await page.textContent('#publish-result'), /"offset": 1\b/);
      assert.equal(received.length, 1, 'one publication: the invalid JSON never left the page');
      await shot(page, 'admin-publish.png');

      // Back in the channel: the publication in history, pretty-printed.
      await page.click('#nav-channels');
      await page.locator('[data-testid=channel-row]', { hasText: channel }).locator('[data-testid=channel-link]').click();
      await waitText(page, '#channel-name', channel, 'the channel view again');
      await page.waitForFunction(() => {
        const item = document.querySelector('[data-testid=history-data]');
        return item !== null && item.textContent.includes('"text": "from the admin console"');
      }, null, { timeout: STEP });
      assert.equal(await page.locator('[data-testid=history-item]').count(), 1);

      // A channel without presence or history shows the API's errors.
      await page.evaluate(ch => { location.hash = '#/channel/' + encodeURIComponent(ch); }, uid('news:admin_ui_'));
      await visible(page, '#history-error');
      assert.match(await page.textContent('#history-error'), /108/);
      await visible(page, '#presence-error');
      assert.match(await page.textContent('#presence-error'), /108/);

      // Nodes: one client, the chart has points and ends at 1.
      await page.click('#nav-nodes');
      await waitText(page, '[data-testid=node-clients]', '1', 'the node counts the SDK client');
      await page.waitForFunction(() => {
        const canvas = document.getElementById('connections-chart');
        return canvas !== null && Number(canvas.dataset.points) >= 2 && canvas.dataset.last === '1';
      }, null, { timeout: STEP });
      const painted = await page.evaluate(() => {
        const canvas = document.getElementById('connections-chart');
        const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let count = 0;
        for (let i = 3; i < pixels.length; i += 4) if (pixels[i] !== 0) count++;
        return { width: canvas.width, height: canvas.height, count };
      });
      assert.ok(painted.width > 0 && painted.height > 0 && painted.count > 100, JSON.stringify(painted));
      await shot(page, 'admin-nodes-live.png');

      // Actions: unsubscribe, then disconnect the SDK user.
      await page.click('#nav-actions');
      await visible(page, '#view-actions');
      await page.fill('#unsubscribe-user', user);
      await page.fill('#unsubscribe-channel', channel);
      const unsubscribed = waitForEvent(sub, 'unsubscribed', { timeoutMs: STEP });
      await page.click('#unsubscribe-submit');
      assert.equal((await unsubscribed).code, 2000);
      await visible(page, '#unsubscribe-result[data-state=ok]');

      await page.fill('#disconnect-user', user);
      const disconnected = waitForEvent(client, 'disconnected', { timeoutMs: STEP });
      await page.click('#disconnect-submit');
      assert.equal((await disconnected).code, 3503);
      await visible(page, '#disconnect-result[data-state=ok]');
      await waitFor(async () => (await api(server, 'info', {})).nodes[0].num_clients === 0,
        { timeoutMs: STEP, what: 'the server to drop the disconnected client' });
      await page.click('#nav-nodes');
      await waitText(page, '[data-testid=node-clients]', '0', 'the node shows the client gone');

      // Log out: the token is dropped, a reload asks for the password again.
      await page.click('#logout');
      await visible(page, '#login-password');
      assert.equal(await page.evaluate(() => sessionStorage.length), 0);
      await page.reload();
      await visible(page, '#login-password');
      assert.equal(await page.isVisible('#app-view'), false);

      // A token the server no longer accepts (here: a garbled one): the next poll gets 401
      // and the page goes back to the login.
      await signIn(page, password);
      expected.push([401, '/admin/api']);
      await page.evaluate(() => {
        for (const key of Object.keys(sessionStorage)) sessionStorage.setItem(key, 'garbled-token');
      });
      await visible(page, '#login-password');
      assert.equal(await page.isVisible('#app-view'), false);
      assert.equal(await page.evaluate(() => sessionStorage.length), 0);
      assert.match(await page.textContent('#login-error'), /sign in again/i);

      assert.equal(await page.evaluate(() => window.pwned), undefined);
      assert.deepEqual(unexpectedErrors(errors, expected), [], 'console errors in the admin page');
    } finally {
      closeAll(client);
      await page.close();
    }
  }));
});

describe('admin UI in insecure mode', () => {
  let server;
  let browser;

  before(async () => {
    mkdirSync(ARTIFACTS, { recursive: true });
    server = await startAdminServer({ insecure: true });
    browser = await launchChromium();
  });

  after(async () => {
    if (browser) await browser.close();
    if (server) await server.stop();
  });

  test('no login: the API answers without a token, the page opens on the nodes view', tracked(() => server, async () => {
    const init = await adminInit(server);
    assert.equal(init.status, 200);
    assert.equal(JSON.parse(init.text).authenticated, true);
    assert.equal(JSON.parse(init.text).insecure, true);
    const info = await adminApi(server, null, 'info');
    assert.equal(info.status, 200, info.text);
    assert.equal(JSON.parse(info.text).result.nodes.length, 1, info.text);

    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const errors = watchPage(page);
    try {
      await page.goto(adminUrl(server));
      await visible(page, '[data-testid=node-card]');
      assert.equal(await page.isVisible('#login-view'), false);
      assert.equal(await page.isVisible('#logout'), false, 'nothing to log out of');
      await visible(page, '#insecure-badge');
      await page.click('#nav-channels');
      await visible(page, '#view-channels');
      await visible(page, '#channels-empty');
      await shot(page, 'admin-insecure.png');
      assert.deepEqual(unexpectedErrors(errors, []), [], 'console errors in the admin page');
    } finally {
      await page.close();
    }
  }));
});

describe('admin UI under a handler prefix, and on the external port when asked', () => {
  let prefixed;
  let external;
  const failing = () => [prefixed, external].find(s => s && s.failed) || prefixed;

  before(async () => {
    prefixed = await startAdminServer({ insecure: true, handler_prefix: '/ops/ui/' });
    external = await startServer({ admin: { enabled: true, insecure: true, external: true } });
  });
  after(async () => {
    for (const server of [prefixed, external]) if (server) await server.stop();
  });

  test('everything moves under the prefix; admin.external serves it beside the transports', tracked(failing, async () => {
    const redirect = await fetch(adminUrl(prefixed, 'ops/ui'), { redirect: 'manual' });
    assert.equal(redirect.status, 307);
    assert.equal(redirect.headers.get('location'), '/ops/ui/');
    const page = await request(adminUrl(prefixed, 'ops/ui/'));
    assert.equal(page.status, 200);
    assert.match(page.text, /<script src="app\.js"/, 'relative asset paths resolve under the prefix');
    assert.equal((await request(adminUrl(prefixed, 'ops/ui/app.js'))).status, 200);
    assert.equal(JSON.parse((await request(adminUrl(prefixed, 'ops/ui/admin/init'))).text).insecure, true);
    assert.equal((await request(adminUrl(prefixed, 'admin/init'))).status, 404, 'nothing outside the prefix');
    assert.equal((await request(adminUrl(prefixed, ''))).status, 404);

    // One port (no internal_port): the UI sits beside the client transports and the API.
    assert.equal((await request(`http://127.0.0.1:${external.port}/`)).status, 200);
    const info = await request(`http://127.0.0.1:${external.port}/admin/api`, {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ method: 'info', params: {} }),
    });
    assert.equal(JSON.parse(info.text).result.nodes.length, 1, info.text);
    assert.equal((await api(external, 'info', {})).nodes.length, 1, 'the API still answers first');
  }));
});
