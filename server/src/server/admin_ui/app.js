// Spinwire admin UI. Plain DOM, no dependencies, no build step.
//
// Security notes: everything the server reports (channel names, user ids, presence info,
// publication data) is attacker-controlled, so it only ever reaches the page through
// textContent / createTextNode, never through innerHTML. The page runs under a strict CSP
// (no inline scripts or styles). The admin token lives in sessionStorage and travels only
// in the Authorization header, which keeps the API safe from cross-site requests.
'use strict';

const base = location.pathname.endsWith('/') ? location.pathname : location.pathname + '/';
const TOKEN_KEY = 'spinwire.admin.token';
const NODES_EVERY_MS = 2000;
const CHANNELS_EVERY_MS = 3000;
const CHANNEL_EVERY_MS = 3000;
const CHART_WINDOW_MS = 5 * 60 * 1000;
const HISTORY_LIMIT = 20;

const $ = (id) => document.getElementById(id);
const numberFormat = new Intl.NumberFormat('en-US');

const state = {
  insecure: false,
  authenticated: false,
  view: null, // 'nodes' | 'channels' | 'channel' | 'publish' | 'actions'
  channel: null, // the channel shown in the channel view
  generation: 0, // bumped on every route change and logout; stale replies are dropped
  session: 0, // bumped on every sign-in and logout; stops the previous session's polling
  samples: [], // [{t, clients}] for the connections chart
  nodes: [],
  channels: null, // {name: {num_clients}}
  timers: { nodes: 0, channels: 0, channel: 0 },
};

class AuthError extends Error {}

// ---------------------------------------------------------------------------------------
// DOM helpers
// ---------------------------------------------------------------------------------------

/** createElement with attributes and children (strings become text nodes). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = String(value);
    else if (key.startsWith('on') && typeof value === 'function') node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function setText(id, value) {
  const node = $(id);
  if (node.textContent !== String(value)) node.textContent = String(value);
}

function showMessage(id, text) {
  const node = $(id);
  node.textContent = text || '';
  node.hidden = !text;
}

const num = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : 0);
const fmt = (v) => numberFormat.format(Math.round(num(v)));

function fmtUptime(seconds) {
  let s = Math.floor(num(seconds));
  const d = Math.floor(s / 86400); s -= d * 86400;
  const h = Math.floor(s / 3600); s -= h * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  const pair = (a, unitA, b, unitB) => (b ? `${a}${unitA} ${b}${unitB}` : `${a}${unitA}`);
  if (d > 0) return pair(d, 'd', h, 'h');
  if (h > 0) return pair(h, 'h', m, 'm');
  if (m > 0) return pair(m, 'm', s, 's');
  return `${s}s`;
}

function fmtBytes(bytes) {
  const b = num(bytes);
  if (b >= 1024 ** 3) return `${(b / 1024 ** 3).toFixed(2)} GiB`;
  if (b >= 1024 ** 2) return `${(b / 1024 ** 2).toFixed(1)} MiB`;
  if (b >= 1024) return `${(b / 1024).toFixed(1)} KiB`;
  return `${b} B`;
}

const fmtTime = (date) => date.toLocaleTimeString('en-GB', { hour12: false });

/** Compact one-line JSON for small values (presence info), pretty for publications. */
function jsonText(value, pretty) {
  if (value === undefined) return '';
  try {
    return JSON.stringify(value, null, pretty ? 2 : 0);
  } catch (e) {
    return String(value);
  }
}

function describeError(error) {
  return `Error ${error.code}: ${error.message || 'unknown error'}`;
}

/** Shows an API outcome ({result} / {error}) or a thrown error in a result <pre>. */
function showOutcome(id, outcome) {
  const node = $(id);
  node.hidden = false;
  if (outcome instanceof Error) {
    node.dataset.state = 'error';
    node.textContent = outcome.message;
  } else if (outcome.error) {
    node.dataset.state = 'error';
    node.textContent = describeError(outcome.error);
  } else {
    node.dataset.state = 'ok';
    const body = jsonText(outcome.result, true);
    node.textContent = body && body !== '{}' ? `OK\n${body}` : 'OK';
  }
}

function showPending(id) {
  const node = $(id);
  node.hidden = false;
  node.dataset.state = 'pending';
  node.textContent = 'Working…';
}

// ---------------------------------------------------------------------------------------
// Server calls
// ---------------------------------------------------------------------------------------

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `token ${token}` } : {};
}

/**
 * POST admin/api. Resolves with {result} or {error} (the API's JSON); a 401 logs out and
 * rejects with AuthError; any other failure rejects with an Error.
 */
async function callApi(method, params = {}) {
  let res;
  try {
    res = await fetch(base + 'admin/api', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', ...authHeaders() },
      body: JSON.stringify({ method, params }),
      cache: 'no-store',
    });
  } catch (e) {
    throw new Error(`Server unreachable (${e.message})`);
  }
  if (res.status === 401) {
    logout('Your session has expired. Sign in again.');
    throw new AuthError('unauthorized');
  }
  const text = await res.text();
  if (res.status !== 200) throw new Error(`HTTP ${res.status}${text ? ': ' + text.slice(0, 200) : ''}`);
  let body;
  try {
    body = JSON.parse(text);
  } catch (e) {
    throw new Error('The server answered with invalid JSON');
  }
  if (body && body.error) return { error: body.error };
  return { result: body && 'result' in body ? body.result || {} : body || {} };
}

async function checkInit() {
  const res = await fetch(base + 'admin/init', { headers: authHeaders(), cache: 'no-store' });
  if (res.status !== 200) throw new Error(`admin/init answered HTTP ${res.status}`);
  return res.json();
}

// ---------------------------------------------------------------------------------------
// Login / logout
// ---------------------------------------------------------------------------------------

function showLogin(message) {
  $('boot').hidden = true;
  $('app-view').hidden = true;
  $('login-view').hidden = false;
  showMessage('login-error', message);
  const input = $('login-password');
  input.value = '';
  input.focus();
}

function showApp() {
  state.authenticated = true;
  $('boot').hidden = true;
  $('login-view').hidden = true;
  $('app-view').hidden = false;
  $('insecure-badge').hidden = !state.insecure;
  $('logout').hidden = state.insecure;
  state.session += 1;
  pollNodes(state.session);
  route();
}

function logout(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.authenticated = false;
  state.generation += 1;
  state.session += 1;
  state.samples = [];
  state.nodes = [];
  state.channels = null;
  stopTimers();
  showLogin(message);
}

async function onLogin(event) {
  event.preventDefault();
  const password = $('login-password').value;
  const button = $('login-submit');
  button.disabled = true;
  showMessage('login-error', '');
  try {
    const res = await fetch(base + 'admin/auth', {
      method: 'POST',
      body: new URLSearchParams({ password }),
      cache: 'no-store',
    });
    if (res.status === 400) {
      showMessage('login-error', 'Wrong password.');
      $('login-password').select();
      return;
    }
    if (res.status !== 200) {
      showMessage('login-error', `Sign-in failed: HTTP ${res.status}.`);
      return;
    }
    const { token } = await res.json();
    if (typeof token !== 'string' || token === '') throw new Error('no token in the reply');
    sessionStorage.setItem(TOKEN_KEY, token);
    $('login-password').value = '';
    showApp();
  } catch (e) {
    showMessage('login-error', `Sign-in failed: ${e.message}`);
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------

function parseHash() {
  const hash = location.hash.replace(/^#\/?/, '');
  if (hash.startsWith('channel/')) {
    try {
      return { view: 'channel', channel: decodeURIComponent(hash.slice('channel/'.length)) };
    } catch (e) {
      return { view: 'channels' };
    }
  }
  if (['nodes', 'channels', 'publish', 'actions'].includes(hash)) return { view: hash };
  return { view: 'nodes' };
}

function channelHref(name) {
  return '#/channel/' + encodeURIComponent(name);
}

function route() {
  if (!state.authenticated) return;
  const { view, channel } = parseHash();
  state.generation += 1;
  clearTimeout(state.timers.channels);
  clearTimeout(state.timers.channel);
  state.view = view;
  state.channel = channel ?? null;
  for (const section of document.querySelectorAll('.view')) section.hidden = section.id !== `view-${view}`;
  const navView = view === 'channel' ? 'channels' : view;
  for (const link of document.querySelectorAll('.nav a')) {
    link.classList.toggle('active', link.dataset.view === navView);
    if (link.dataset.view === navView) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  if (view === 'nodes') {
    renderNodes();
  } else if (view === 'channels') {
    renderChannels();
    pollChannels();
  } else if (view === 'channel') {
    openChannel(channel);
  }
}

function stopTimers() {
  for (const key of Object.keys(state.timers)) clearTimeout(state.timers[key]);
}

function setStatus(kind, text) {
  $('status').dataset.state = kind;
  setText('status-text', text);
}

// ---------------------------------------------------------------------------------------
// Nodes (polled in the background while signed in: the chart keeps its history)
// ---------------------------------------------------------------------------------------

async function pollNodes(session) {
  clearTimeout(state.timers.nodes);
  try {
    const outcome = await callApi('info');
    if (session !== state.session) return;
    if (outcome.error) {
      showMessage('nodes-error', describeError(outcome.error));
      setStatus('error', 'info failed');
    } else {
      showMessage('nodes-error', '');
      state.nodes = Array.isArray(outcome.result.nodes) ? outcome.result.nodes : [];
      const now = Date.now();
      state.samples.push({ t: now, clients: state.nodes.reduce((sum, n) => sum + num(n.num_clients), 0) });
      while (state.samples.length && state.samples[0].t < now - CHART_WINDOW_MS) state.samples.shift();
      setStatus('ok', `Live · ${fmtTime(new Date(now))}`);
      if (state.view === 'nodes') renderNodes();
    }
  } catch (e) {
    if (e instanceof AuthError || session !== state.session) return;
    setStatus('error', 'Server unreachable');
    if (state.view === 'nodes') showMessage('nodes-error', e.message);
  }
  state.timers.nodes = setTimeout(() => pollNodes(session), NODES_EVERY_MS);
}

/** Sum of the metric items whose flattened name starts with `prefix`. */
function metricSum(items, prefix) {
  let total = 0;
  let seen = false;
  for (const [key, value] of Object.entries(items || {})) {
    if (key === prefix || key.startsWith(prefix + '.')) {
      total += num(value);
      seen = true;
    }
  }
  return seen ? total : null;
}

const HEADLINES = [
  ['Messages sent', 'centrifugo.node.messages_sent_count', 'metric-sent'],
  ['Messages received', 'centrifugo.node.messages_received_count', 'metric-received'],
  ['Client commands', 'centrifugo.client.command_duration_seconds.count', 'metric-commands'],
  ['API calls', 'centrifugo.api.command_duration_seconds.count', 'metric-api'],
  ['Server disconnects', 'centrifugo.client.num_server_disconnects', 'metric-disconnects'],
];

function stat(label, value, testid, title) {
  return el('div', { class: 'stat' },
    el('span', { class: 'label', text: label }),
    el('span', { class: 'value', 'data-testid': testid, title, text: value }));
}

function nodeCard(node) {
  const uid = String(node.uid || '');
  const stats = [
    stat('Clients', fmt(node.num_clients), 'node-clients'),
    stat('Users', fmt(node.num_users), 'node-users'),
    stat('Channels', fmt(node.num_channels), 'node-channels'),
    stat('Subscriptions', fmt(node.num_subs), 'node-subs'),
  ];
  if (node.process) {
    stats.push(stat('RSS', fmtBytes(node.process.rss), 'node-rss'));
    stats.push(stat('CPU', `${num(node.process.cpu).toFixed(1)} %`, 'node-cpu'));
  }
  let metrics = null;
  const items = node.metrics && node.metrics.items;
  if (items && Object.keys(items).length) {
    const interval = num(node.metrics.interval);
    const figures = HEADLINES
      .map(([label, prefix, testid]) => [label, metricSum(items, prefix), testid])
      .filter(([, value]) => value !== null)
      .map(([label, value, testid]) => stat(label, fmt(value), testid));
    if (figures.length) {
      metrics = el('div', { class: 'node-metrics', 'data-testid': 'node-metrics' },
        el('div', { class: 'metrics-title muted', text: interval ? `Activity in the last sampled interval (${fmtUptime(interval)})` : 'Activity' }),
        el('div', { class: 'stats' }, figures));
    }
  }
  return el('article', { class: 'card node-card', 'data-testid': 'node-card', 'data-uid': uid },
    el('header', { class: 'card-head' },
      el('h2', { 'data-testid': 'node-name', text: node.name || '(unnamed)' }),
      el('span', { class: 'mono muted', 'data-testid': 'node-uid', title: uid, text: uid.slice(0, 8) }),
      el('span', { class: 'spacer' }),
      el('span', { class: 'tag', 'data-testid': 'node-version', text: node.version || '' }),
      el('span', { class: 'tag', title: 'Uptime', 'data-testid': 'node-uptime', text: `up ${fmtUptime(node.uptime)}` })),
    el('div', { class: 'stats' }, stats),
    metrics);
}

function renderNodes() {
  const nodes = state.nodes;
  const sum = (field) => nodes.reduce((total, n) => total + num(n[field]), 0);
  const loaded = state.samples.length > 0;
  setText('total-nodes', loaded ? fmt(nodes.length) : '–');
  setText('total-clients', loaded ? fmt(sum('num_clients')) : '–');
  setText('total-users', loaded ? fmt(sum('num_users')) : '–');
  setText('total-subs', loaded ? fmt(sum('num_subs')) : '–');
  $('node-list').replaceChildren(...nodes.map(nodeCard));
  if (loaded) setText('nodes-updated', `updated ${fmtTime(new Date(state.samples[state.samples.length - 1].t))}`);
  drawChart();
}

// ---------------------------------------------------------------------------------------
// Connections chart (canvas, own code)
// ---------------------------------------------------------------------------------------

function niceCeiling(value) {
  if (value <= 4) return 4;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (step * magnitude >= value) return step * magnitude;
  }
  return 10 * magnitude;
}

function drawChart() {
  const canvas = $('connections-chart');
  const samples = state.samples;
  canvas.dataset.points = String(samples.length);
  canvas.dataset.last = samples.length ? String(samples[samples.length - 1].clients) : '';
  const cssWidth = canvas.clientWidth;
  const cssHeight = canvas.clientHeight || 180;
  if (!cssWidth) return; // hidden
  const ratio = window.devicePixelRatio || 1;
  if (canvas.width !== Math.round(cssWidth * ratio) || canvas.height !== Math.round(cssHeight * ratio)) {
    canvas.width = Math.round(cssWidth * ratio);
    canvas.height = Math.round(cssHeight * ratio);
  }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, cssWidth, cssHeight);

  const pad = { left: 44, right: 12, top: 10, bottom: 22 };
  const w = cssWidth - pad.left - pad.right;
  const h = cssHeight - pad.top - pad.bottom;
  const max = niceCeiling(Math.max(0, ...samples.map(s => s.clients)));
  const now = samples.length ? samples[samples.length - 1].t : Date.now();
  const start = now - CHART_WINDOW_MS;
  const x = (t) => pad.left + ((t - start) / CHART_WINDOW_MS) * w;
  const y = (v) => pad.top + h - (v / max) * h;

  ctx.font = '11px system-ui, sans-serif';
  ctx.textBaseline = 'middle';
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const value = (max / 4) * i;
    const gy = Math.round(y(value)) + 0.5;
    ctx.strokeStyle = i === 0 ? '#c5ccd6' : '#eceff3';
    ctx.beginPath();
    ctx.moveTo(pad.left, gy);
    ctx.lineTo(pad.left + w, gy);
    ctx.stroke();
    ctx.fillStyle = '#6b7684';
    ctx.textAlign = 'right';
    ctx.fillText(fmt(value), pad.left - 6, gy);
  }
  ctx.textAlign = 'left';
  ctx.textBaseline = 'alphabetic';
  ctx.fillText('−5 min', pad.left, cssHeight - 6);
  ctx.textAlign = 'right';
  ctx.fillText('now', pad.left + w, cssHeight - 6);

  if (samples.length === 0) {
    setText('chart-legend', 'waiting for data…');
    return;
  }
  ctx.beginPath();
  samples.forEach((s, i) => (i === 0 ? ctx.moveTo(x(s.t), y(s.clients)) : ctx.lineTo(x(s.t), y(s.clients))));
  ctx.strokeStyle = '#2563eb';
  ctx.lineWidth = 2;
  ctx.lineJoin = 'round';
  ctx.stroke();
  ctx.lineTo(x(samples[samples.length - 1].t), y(0));
  ctx.lineTo(x(samples[0].t), y(0));
  ctx.closePath();
  ctx.fillStyle = 'rgba(37, 99, 235, 0.10)';
  ctx.fill();
  const last = samples[samples.length - 1];
  ctx.beginPath();
  ctx.arc(x(last.t), y(last.clients), 3, 0, Math.PI * 2);
  ctx.fillStyle = '#2563eb';
  ctx.fill();

  const peak = Math.max(...samples.map(s => s.clients));
  setText('chart-legend', `now ${fmt(last.clients)} · peak ${fmt(peak)}`);
}

// ---------------------------------------------------------------------------------------
// Channels
// ---------------------------------------------------------------------------------------

async function pollChannels() {
  clearTimeout(state.timers.channels);
  const generation = state.generation;
  try {
    const outcome = await callApi('channels', {});
    if (generation !== state.generation) return;
    if (outcome.error) {
      showMessage('channels-error', describeError(outcome.error));
    } else {
      showMessage('channels-error', '');
      state.channels = outcome.result.channels || {};
      renderChannels();
    }
  } catch (e) {
    if (e instanceof AuthError || generation !== state.generation) return;
    showMessage('channels-error', e.message);
  }
  state.timers.channels = setTimeout(pollChannels, CHANNELS_EVERY_MS);
}

function renderChannels() {
  if (!state.channels) return;
  const filter = $('channels-filter').value.trim().toLowerCase();
  const all = Object.entries(state.channels);
  const shown = all
    .filter(([name]) => !filter || name.toLowerCase().includes(filter))
    .sort((a, b) => num(b[1] && b[1].num_clients) - num(a[1] && a[1].num_clients) || (a[0] < b[0] ? -1 : 1));
  const rows = shown.map(([name, info]) => el('tr', { 'data-testid': 'channel-row' },
    el('td', {}, el('a', { href: channelHref(name), class: 'mono', 'data-testid': 'channel-link' },
      el('span', { 'data-testid': 'channel-name', text: name }))),
    el('td', { class: 'num', 'data-testid': 'channel-clients', text: fmt(info && info.num_clients) })));
  $('channels-body').replaceChildren(...rows);
  $('channels-empty').hidden = rows.length > 0;
  $('channels-empty').textContent = all.length ? 'No channel matches the filter.' : 'No channels.';
  setText('channels-count', filter ? `${shown.length} of ${all.length}` : `${all.length} total`);
}

// ---------------------------------------------------------------------------------------
// One channel: presence, presence stats, history
// ---------------------------------------------------------------------------------------

function openChannel(channel) {
  setText('channel-name', channel);
  setText('channel-num-clients', '–');
  setText('channel-num-users', '–');
  $('presence-body').replaceChildren();
  $('history-list').replaceChildren();
  for (const id of ['presence-error', 'history-error']) showMessage(id, '');
  for (const id of ['presence-empty', 'history-empty']) $(id).hidden = true;
  setText('history-meta', '');
  loadChannel();
}

async function loadChannel() {
  clearTimeout(state.timers.channel);
  const generation = state.generation;
  const channel = state.channel;
  const button = $('channel-refresh');
  button.disabled = true;
  try {
    const [presence, stats, history] = await Promise.all([
      callApi('presence', { channel }),
      callApi('presence_stats', { channel }),
      callApi('history', { channel, limit: HISTORY_LIMIT, reverse: true }),
    ]);
    if (generation !== state.generation) return;
    renderPresence(presence, stats);
    renderHistory(history);
  } catch (e) {
    if (e instanceof AuthError || generation !== state.generation) return;
    showMessage('presence-error', e.message);
  } finally {
    if (generation === state.generation) {
      button.disabled = false;
      state.timers.channel = setTimeout(loadChannel, CHANNEL_EVERY_MS);
    }
  }
}

function renderPresence(presence, stats) {
  if (stats.error) {
    setText('channel-num-clients', '–');
    setText('channel-num-users', '–');
  } else {
    setText('channel-num-clients', fmt(stats.result.num_clients));
    setText('channel-num-users', fmt(stats.result.num_users));
  }
  if (presence.error) {
    showMessage('presence-error', describeError(presence.error));
    $('presence-body').replaceChildren();
    $('presence-empty').hidden = true;
    return;
  }
  showMessage('presence-error', '');
  const clients = Object.entries(presence.result.presence || {})
    .sort((a, b) => String(a[1].user).localeCompare(String(b[1].user)) || (a[0] < b[0] ? -1 : 1));
  const rows = clients.map(([id, info]) => el('tr', { 'data-testid': 'presence-row' },
    el('td', { class: 'mono', 'data-testid': 'presence-client', text: info.client || id }),
    el('td', { class: 'mono', 'data-testid': 'presence-user', text: info.user || '' }),
    el('td', { class: 'mono small', text: jsonText(info.conn_info, false) }),
    el('td', { class: 'mono small', text: jsonText(info.chan_info, false) })));
  $('presence-body').replaceChildren(...rows);
  $('presence-empty').hidden = rows.length > 0;
}

function renderHistory(history) {
  if (history.error) {
    showMessage('history-error', describeError(history.error));
    $('history-list').replaceChildren();
    $('history-empty').hidden = true;
    setText('history-meta', '');
    return;
  }
  showMessage('history-error', '');
  const { publications = [], offset, epoch } = history.result;
  setText('history-meta', epoch ? `top offset ${num(offset)} · epoch ${epoch}` : '');
  const items = publications.map((pub) => {
    const meta = [`#${num(pub.offset)}`];
    if (pub.info && pub.info.user) meta.push(`from ${pub.info.user}`);
    if (pub.tags && Object.keys(pub.tags).length) meta.push(`tags ${jsonText(pub.tags, false)}`);
    const body = 'data' in pub ? jsonText(pub.data, true) : pub.b64data !== undefined ? `(base64) ${pub.b64data}` : '';
    return el('li', { 'data-testid': 'history-item' },
      el('div', { class: 'history-meta muted mono', text: meta.join(' · ') }),
      el('pre', { class: 'json', 'data-testid': 'history-data', text: body }));
  });
  $('history-list').replaceChildren(...items);
  $('history-empty').hidden = items.length > 0;
}

// ---------------------------------------------------------------------------------------
// Publish console and actions
// ---------------------------------------------------------------------------------------

function parseJsonInput(text) {
  if (text.trim() === '') return { error: 'Data is empty: enter a JSON value, e.g. {"text": "hello"}.' };
  try {
    return { value: JSON.parse(text) };
  } catch (e) {
    return { error: `Invalid JSON: ${e.message}` };
  }
}

function showInvalid(text) {
  const result = $('publish-result');
  result.hidden = false;
  result.dataset.state = 'invalid';
  result.textContent = text;
}

async function onPublish(event) {
  event.preventDefault();
  const channel = $('publish-channel').value.trim();
  const parsed = parseJsonInput($('publish-data').value);
  if (!channel) return showInvalid('Enter a channel.');
  if (parsed.error) return showInvalid(parsed.error);
  await runAction('publish-submit', 'publish-result', 'publish', { channel, data: parsed.value });
}

function onFormat() {
  const parsed = parseJsonInput($('publish-data').value);
  if (parsed.error) return showInvalid(parsed.error);
  $('publish-data').value = JSON.stringify(parsed.value, null, 2);
  $('publish-result').hidden = true;
}

async function runAction(buttonId, resultId, method, params) {
  const button = $(buttonId);
  button.disabled = true;
  showPending(resultId);
  try {
    showOutcome(resultId, await callApi(method, params));
  } catch (e) {
    if (!(e instanceof AuthError)) showOutcome(resultId, e);
  } finally {
    button.disabled = false;
  }
}

function onDisconnect(event) {
  event.preventDefault();
  const user = $('disconnect-user').value.trim();
  if (user) runAction('disconnect-submit', 'disconnect-result', 'disconnect', { user });
}

function onUnsubscribe(event) {
  event.preventDefault();
  const user = $('unsubscribe-user').value.trim();
  const channel = $('unsubscribe-channel').value.trim();
  if (user && channel) runAction('unsubscribe-submit', 'unsubscribe-result', 'unsubscribe', { user, channel });
}

// ---------------------------------------------------------------------------------------
// Start
// ---------------------------------------------------------------------------------------

async function start() {
  $('login-form').addEventListener('submit', onLogin);
  $('logout').addEventListener('click', () => logout(''));
  $('channels-filter').addEventListener('input', renderChannels);
  $('channel-refresh').addEventListener('click', () => loadChannel());
  $('channel-publish').addEventListener('click', () => {
    $('publish-channel').value = state.channel || '';
    location.hash = '#/publish';
  });
  $('publish-form').addEventListener('submit', onPublish);
  $('publish-format').addEventListener('click', onFormat);
  $('disconnect-form').addEventListener('submit', onDisconnect);
  $('unsubscribe-form').addEventListener('submit', onUnsubscribe);
  window.addEventListener('hashchange', route);
  window.addEventListener('resize', () => { if (state.view === 'nodes') drawChart(); });

  try {
    const init = await checkInit();
    state.insecure = Boolean(init.insecure);
    if (init.authenticated) {
      showApp();
    } else {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin('');
    }
  } catch (e) {
    showLogin(`Cannot reach the server: ${e.message}`);
  }
}

start();
