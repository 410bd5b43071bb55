// Helpers for the fault-injection suites: timed API publishes that never throw, /health
// probes, and the "no silent gap" check of a subscriber's event log.
import assert from 'node:assert/strict';

import {
  PROTOCOLS, newClient, connectClient, subscribeAndWait, connToken, uid, delay, waitFor,
} from './harness.mjs';

/** POST /api/publish, timed; never throws. */
export async function timedPublish(server, channel, n) {
  const started = Date.now();
  try {
    const res = await fetch(`${server.apiUrl}/publish`, {
      method: 'POST',
      headers: { 'X-API-Key': server.apiKey },
      body: JSON.stringify({ channel, data: { n } }),
      signal: AbortSignal.timeout(10000),
    });
    const body = await res.json();
    const ms = Date.now() - started;
    if (body.error) return { n, ok: false, code: body.error.code, ms, at: started };
    return { n, ok: true, offset: body.result.offset, epoch: body.result.epoch, ms, at: started };
  } catch (e) {
    return { n, ok: false, code: -1, error: String(e), ms: Date.now() - started, at: started };
  }
}

export async function healthStatus(server) {
  try {
    const res = await fetch(server.healthUrl, { signal: AbortSignal.timeout(2000) });
    await res.arrayBuffer();
    return res.status;
  } catch {
    return -1;
  }
}

/**
 * Checks one subscriber's event log (`sub` and `pub` entries in arrival order) against what
 * the API acknowledged: within a subscription offsets advance by exactly one, and after the
 * last (re)subscribe every acknowledged publication of that epoch arrived.
 */
export function assertNoSilentGap(name, events, acknowledged) {
  let expectNext = null;
  let lastSub = null;
  for (const event of events) {
    if (event.type === 'sub') {
      lastSub = event.ctx;
      if (!event.ctx.recovered) expectNext = event.ctx.streamPosition.offset + 1;
      continue;
    }
    if (expectNext !== null) {
      assert.equal(event.offset, expectNext, `${name}: publication ${event.offset} after ${expectNext - 1} is a silent gap`);
    }
    expectNext = event.offset + 1;
  }
  assert.ok(lastSub, `${name}: subscribed`);
  const epoch = subscriptionEpoch(lastSub, acknowledged);
  const received = new Set(events.filter(e => e.type === 'pub').map(e => e.offset));
  const owed = acknowledged.filter(p => p.epoch === epoch && p.offset > lastSub.streamPosition.offset);
  const missing = owed.filter(p => !received.has(p.offset)).map(p => p.offset);
  assert.deepEqual(missing, [], `${name}: acknowledged publications never delivered`);
  return owed.length;
}


/**
 * `count` npm centrifuge clients on `node` (alternating JSON and Protobuf), each subscribed to
 * `channel` and logging `sub`/`pub` events in arrival order for `assertNoSilentGap`.
 */
export async function subscribeMany(node, channel, count) {
  const subscribers = [];
  for (let i = 0; i < count; i++) {
    const proto = PROTOCOLS[i % 2];
    const client = newClient(node, proto, { token: connToken(node, uid('s-')) });
    await connectClient(client);
    const sub = client.newSubscription(channel);
    const events = [];
    sub.on('subscribed', ctx => events.push({ type: 'sub', ctx }));
    sub.on('publication', ctx => events.push({ type: 'pub', offset: ctx.offset }));
    await subscribeAndWait(sub);
    subscribers.push({ client, events, name: `subscriber ${i} (${proto.name})` });
  }
  return subscribers;
}

/** Publishes to `channel` through `node`'s API back to back until `stop()`; `results` grows. */
export function startPublisher(node, channel) {
  const results = [];
  let running = true;
  let n = 0;
  const done = (async () => {
    while (running) {
      results.push(await timedPublish(node, channel, ++n));
      await delay(10);
    }
  })();
  return { results, stop: async () => { running = false; await done; } };
}

/**
 * Waits until every subscriber is subscribed on the epoch of the last acknowledged publication
 * and has it (or was positioned past it), then checks each for silent gaps. Returns the number
 * of deliveries the subscribers were owed (all made).
 */
/**
 * Publications a subscriber got live since its last (re)subscribe: those past the position it
 * subscribed at, so recovered ones (delivered with the subscribe) do not count.
 */
export function liveSinceLastSubscribe(subscriber) {
  const { events } = subscriber;
  let lastSub = -1;
  for (let i = events.length - 1; i >= 0; i--) {
    if (events[i].type === 'sub') { lastSub = i; break; }
  }
  if (lastSub < 0) return 0;
  const position = events[lastSub].ctx.streamPosition.offset;
  return events.slice(lastSub + 1).filter(e => e.type === 'pub' && e.offset > position).length;
}

/**
 * The epoch a subscription follows: the one its subscribe reported, or, for a channel that had
 * none yet (nothing published: reading creates no epoch), the one the first publication
 * started, which the SDK adopts from that publication.
 */
function subscriptionEpoch(ctx, acknowledged) {
  return ctx.streamPosition.epoch || (acknowledged[0] && acknowledged[0].epoch) || '';
}

export async function assertSubscribersCaughtUp(subscribers, results) {
  const acknowledged = results.filter(r => r.ok);
  const last = acknowledged[acknowledged.length - 1];
  await waitFor(() => subscribers.every(s => {
    const subs = s.events.filter(e => e.type === 'sub');
    const position = subs[subs.length - 1].ctx.streamPosition;
    if (subscriptionEpoch(subs[subs.length - 1].ctx, acknowledged) !== last.epoch) return false;
    return s.events.some(e => e.type === 'pub' && e.offset === last.offset) || position.offset >= last.offset;
  }), { timeoutMs: 15000, intervalMs: 100, what: 'every subscriber on the final epoch with the last publication' });
  let owed = 0;
  for (const s of subscribers) owed += assertNoSilentGap(s.name, s.events, acknowledged);
  return owed;
}

/**
 * The value of one sample of `/metrics` (prometheus.enabled): the series called `name` whose
 * labels include `labels`, summed; 0 when there is none. A plain text scan, enough for
 * counters and gauges.
 */
export async function metricValue(server, name, labels = {}) {
  const res = await fetch(`http://127.0.0.1:${server.apiPort}/metrics`, { signal: AbortSignal.timeout(5000) });
  const text = await res.text();
  assert.equal(res.status, 200, text);
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const found = Object.fromEntries([...(m[2] || '').matchAll(/([a-zA-Z_]+)="((?:[^"\\]|\\.)*)"/g)].map(x => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => found[k] === v)) sum += Number(m[3]);
  }
  return sum;
}
