// Scenario 36: Prometheus metrics. `/metrics` (prometheus.enabled) is scraped with a
// Prometheus text-format parser while npm `centrifuge` clients connect, subscribe, publish and
// get errors; the values move as Centrifugo's do, under Centrifugo's names and labels, so its
// dashboards and alerts keep working. `info` reports the same figures per node.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import {
  REPO_ROOT, PROTOCOLS, startServer, tracked, freePort, newClient, connectClient, connToken, subscribeAndWait,
  waitForEvent, waitFor, api, uid, closeAll,
} from '../harness.mjs';
import { VENV_PYTHON } from '../proxy.mjs';

// Prometheus' own Python client parses the exposition (`prometheus_client.parser`, the
// reference implementation of the text format), so a formatting mistake fails here.
const PARSE = `
import json, math, sys
from prometheus_client.parser import text_string_to_metric_families
out = {"types": {}, "samples": []}
for family in text_string_to_metric_families(sys.stdin.read()):
    out["types"][family.name] = family.type
    for s in family.samples:
        value = s.value if math.isfinite(s.value) else None
        out["samples"].append({"name": s.name, "labels": s.labels, "value": value})
print(json.dumps(out))
`;

/** GET /metrics, parsed: `{ types: { family: type }, samples: [{ name, labels, value }] }`. */
async function scrape(server, path = '/metrics') {
  const res = await fetch(`http://127.0.0.1:${server.apiPort}${path}`, { signal: AbortSignal.timeout(5000) });
  const text = await res.text();
  assert.equal(res.status, 200, text);
  assert.match(res.headers.get('content-type'), /^text\/plain; version=0\.0\.4/);
  return JSON.parse(execFileSync(VENV_PYTHON, ['-c', PARSE], { input: text, encoding: 'utf8' }));
}

/** Sum of the samples called `name` whose labels include `labels`. (The parser reads counters
 *  the OpenMetrics way, their samples ending in `_total` whatever the exposition says.) */
function total(scraped, name, labels = {}) {
  return samples(scraped, name)
    .filter(s => Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .reduce((sum, s) => sum + (s.value ?? 0), 0);
}

function samples(scraped, name) {
  return scraped.samples.filter(s => s.name === name || s.name === `${name}_total`);
}

function growth(before, after, name, labels) {
  return total(after, name, labels) - total(before, name, labels);
}

describe('prometheus metrics', () => {
  let server;
  before(async () => {
    server = await startServer({ prometheus: { enabled: true } });
  });
  after(async () => { if (server) await server.stop(); });

  test('a fresh node exposes Centrifugo\'s families at zero', tracked(() => server, async () => {
    const scraped = await scrape(server);
    assert.equal(scraped.types.centrifugo_node_num_clients, 'gauge');
    assert.equal(scraped.types.centrifugo_client_command_duration_seconds, 'summary');
    assert.equal(scraped.types.centrifugo_client_command_duration_seconds_histogram, 'histogram');
    assert.equal(total(scraped, 'centrifugo_node_num_nodes'), 1);
    const methods = scraped.samples
      .filter(s => s.name === 'centrifugo_client_command_duration_seconds_count')
      .map(s => s.labels.method).sort();
    assert.deepEqual(methods, ['connect', 'history', 'presence', 'presence_stats', 'publish', 'refresh',
      'rpc', 'send', 'sub_refresh', 'subscribe', 'unknown', 'unsubscribe']);
    const sent = samples(scraped, 'centrifugo_node_messages_sent_count');
    assert.deepEqual(sent.map(s => s.labels.type).sort(), ['control', 'join', 'leave', 'publication']);
    assert.ok(sent.every(s => s.labels.channel_namespace === ''), 'channel_namespace is there, empty');
    assert.equal(scraped.samples.filter(s => s.name === 'centrifugo_node_build').length, 1);
    assert.ok(total(scraped, 'process_resident_memory_bytes') > 1e6, 'process metrics');
    assert.ok(total(scraped, 'process_open_fds') > 0);
  }));

  test('values move with real clients: connections, commands, errors, deliveries, API calls',
    tracked(() => server, async () => {
      const before = await scrape(server);
      const channel = uid('chat:metrics_');
      const [jsonProtocol, protobufProtocol] = PROTOCOLS;
      const json = newClient(server, jsonProtocol, { name: '', token: connToken(server, 'metrics-a') });
      const protobuf = newClient(server, protobufProtocol, { token: connToken(server, 'metrics-b') });
      try {
        await connectClient(json);
        await connectClient(protobuf);
        const subs = [json, protobuf].map(c => c.newSubscription(channel));
        await Promise.all(subs.map(s => subscribeAndWait(s)));
        const locked = json.newSubscription(uid('locked:metrics_'));
        const refused = waitForEvent(locked, 'unsubscribed');
        locked.subscribe();
        assert.equal((await refused).code, 103);

        const decoders = [jsonProtocol.decode, protobufProtocol.decode];
        const delivered = subs.map((s, i) => waitForEvent(s, 'publication', { filter: ctx => decoders[i](ctx.data).n === 2 }));
        await api(server, 'publish', { channel, data: { n: 1 } });
        await subs[1].publish(protobufProtocol.encode({ n: 2 }));
        await Promise.all(delivered);
        await api(server, 'publish', { channel: '', data: {} }).catch(e => assert.equal(e.code, 107));

        const during = await scrape(server);
        assert.equal(total(during, 'centrifugo_node_num_clients'), 2);
        assert.ok(total(during, 'centrifugo_node_num_subscriptions') >= 2);
        assert.equal(growth(before, during, 'centrifugo_client_connections_accepted', { transport: 'websocket' }), 2);
        assert.equal(total(during, 'centrifugo_client_connections_inflight', { transport: 'websocket' }), 2);
        // Centrifugo 6.9 labels any client name as `unregistered` (it has no registry of
        // names), and an empty one as `unnamed`.
        assert.equal(total(during, 'centrifugo_client_connections_accepted', { client_name: 'unnamed' }), 1);
        assert.equal(total(during, 'centrifugo_client_connections_accepted', { client_name: 'unregistered' }), 1);
        assert.equal(total(during, 'spinwire_transport_connections', { transport: 'websocket' }), 2);
        assert.equal(total(during, 'centrifugo_client_subscriptions_inflight'), 2);

        assert.equal(growth(before, during, 'centrifugo_node_messages_sent_count', { type: 'publication' }), 2);
        assert.equal(growth(before, during, 'centrifugo_node_messages_received_count', { type: 'publication' }), 2);
        const pushes = { transport: 'websocket', frame_type: 'push_publication' };
        assert.equal(growth(before, during, 'centrifugo_transport_messages_sent', pushes), 4);
        assert.ok(growth(before, during, 'centrifugo_transport_messages_sent_size', pushes) > 4 * 10);
        assert.equal(growth(before, during, 'centrifugo_transport_messages_received', { frame_type: 'connect' }), 2);
        assert.equal(growth(before, during, 'centrifugo_transport_messages_received', { frame_type: 'subscribe' }), 3);
        assert.equal(growth(before, during, 'centrifugo_transport_messages_sent', { frame_type: 'connect' }), 2);

        assert.equal(total(during, 'centrifugo_client_num_reply_errors', { method: 'subscribe', code: '103' }), 1);
        assert.equal(growth(before, during, 'centrifugo_client_command_duration_seconds_count', { method: 'connect' }), 2);
        const connects = { method: 'connect' };
        assert.equal(growth(before, during, 'centrifugo_client_command_duration_seconds_histogram_count', connects), 2);
        assert.equal(growth(before, during, 'centrifugo_client_command_duration_seconds_histogram_bucket',
          { ...connects, le: '+Inf' }), 2);
        assert.equal(growth(before, during, 'centrifugo_client_command_duration_seconds_count', { method: 'publish' }), 1);
        assert.ok(total(during, 'centrifugo_node_broadcast_duration_seconds_count') >= 2, 'broadcasts timed');
        const action = name => growth(before, during, 'centrifugo_node_action_count', { action: name });
        assert.equal(action('add_client'), 2);
        assert.equal(action('add_subscription'), 2, 'the refused subscription was never added');
        assert.equal(action('broker_subscribe'), 1, 'one channel, subscribed at the broker once');
        assert.ok(action('add_presence') >= 2, 'the chat namespace keeps presence');

        assert.equal(total(during, 'centrifugo_api_command_duration_seconds_count', { method: 'publish', protocol: 'http' }), 2);
        assert.equal(total(during, 'centrifugo_api_command_errors_total',
          { method: 'publish', protocol: 'http', error: '107' }), 1);

        json.disconnect();
        await waitFor(async () => total(await scrape(server), 'centrifugo_node_num_clients') === 1,
          { what: 'num_clients back to 1' });
        const after = await scrape(server);
        assert.equal(total(after, 'centrifugo_client_connections_inflight', { transport: 'websocket' }), 1);
        assert.equal(total(after, 'spinwire_transport_connections', { transport: 'websocket' }), 1);
      } finally {
        closeAll(json, protobuf);
      }
    }));

  test('a server-side disconnect is counted by code', tracked(() => server, async () => {
    const client = newClient(server, PROTOCOLS[0], { token: connToken(server, 'metrics-kicked') });
    try {
      await connectClient(client);
      const before = await scrape(server);
      const disconnected = waitForEvent(client, 'disconnected');
      await api(server, 'disconnect', { user: 'metrics-kicked' });
      assert.equal((await disconnected).code, 3503);
      await waitFor(async () => growth(before, await scrape(server), 'centrifugo_client_num_server_disconnects',
        { code: '3503' }) === 1, { what: '3503 counted' });
      assert.equal(growth(before, await scrape(server), 'centrifugo_transport_outgoing_close_count',
        { code: '3503', transport: 'websocket' }), 1);
    } finally {
      closeAll(client);
    }
  }));

  test('recoveries, server unsubscribes and subscriptions in flight', tracked(() => server, async () => {
    const channel = uid('rec:metrics_');
    const client = newClient(server, PROTOCOLS[0], { token: connToken(server, 'metrics-recover') });
    try {
      await connectClient(client);
      const sub = client.newSubscription(channel);
      await subscribeAndWait(sub);
      const before = await scrape(server);
      assert.equal(total(before, 'centrifugo_client_subscriptions_inflight'), 1);
      await api(server, 'publish', { channel, data: { n: 1 } });
      // A reconnecting disconnect: the SDK comes back and recovers the stream.
      const resubscribed = waitForEvent(sub, 'subscribed', { timeoutMs: 10000 });
      await api(server, 'disconnect', { user: 'metrics-recover', disconnect: { code: 4000, reason: 'again' } });
      assert.equal((await resubscribed).wasRecovering, true);
      await waitFor(async () => growth(before, await scrape(server), 'centrifugo_client_recover',
        { recovered: 'yes' }) === 1, { what: 'a recovery counted' });
      const unsubscribed = waitForEvent(sub, 'unsubscribed');
      await api(server, 'unsubscribe', { user: 'metrics-recover', channel });
      assert.equal((await unsubscribed).code, 2000);
      const after = await scrape(server);
      assert.equal(growth(before, after, 'centrifugo_client_num_server_unsubscribes', { code: '2000' }), 1);
      assert.equal(total(after, 'centrifugo_client_subscriptions_inflight'), 0);
    } finally {
      closeAll(client);
    }
  }));

  test('info reports the figures under Centrifugo\'s flattened names', tracked(() => server, async () => {
    const items = (await api(server, 'info', {})).nodes[0].metrics.items;
    assert.equal(typeof items['centrifugo.node.num_clients'], 'number');
    assert.equal(typeof items['centrifugo.node.messages_sent_count.type.publication'], 'number');
    assert.equal(typeof items['centrifugo.client.command_duration_seconds.count.method.connect'], 'number');
    assert.ok(!Object.keys(items).some(k => k.includes('_histogram')), 'histograms are left out');
  }));
});

/** Every metric name the Grafana dashboard's queries select. */
function dashboardMetrics() {
  const dashboard = JSON.parse(readFileSync(join(REPO_ROOT, 'server', 'ops', 'grafana', 'spinwire.json'), 'utf8'));
  const names = new Set();
  for (const panel of dashboard.panels) {
    for (const target of panel.targets) {
      for (const [name] of target.expr.matchAll(/\b(?:centrifugo|spinwire|process)_[a-z_]+(?=\{)/g)) names.add(name);
    }
  }
  return [...names].sort();
}

describe('the Grafana dashboard (server/ops/grafana/spinwire.json)', () => {
  let server;
  before(async () => {
    server = await startServer({ prometheus: { enabled: true } });
  });
  after(async () => { if (server) await server.stop(); });

  test('queries only metrics a node exports after ordinary traffic', tracked(() => server, async () => {
    const channel = uid('chat:dashboard_');
    const client = newClient(server, PROTOCOLS[0], { token: connToken(server, 'dashboard') });
    try {
      await connectClient(client);
      const sub = client.newSubscription(channel);
      await subscribeAndWait(sub);
      const delivered = waitForEvent(sub, 'publication');
      await api(server, 'publish', { channel, data: { shown: true } });
      await delivered;
      const refused = client.newSubscription(uid('locked:dashboard_'));
      const unsubscribed = waitForEvent(refused, 'unsubscribed');
      refused.subscribe();
      await unsubscribed;
      await api(server, 'publish', { channel: '', data: {} }).catch(() => {});
      const disconnected = waitForEvent(client, 'disconnected');
      await api(server, 'disconnect', { user: 'dashboard' });
      await disconnected;
      await waitFor(async () => total(await scrape(server), 'centrifugo_client_num_server_disconnects') > 0,
        { what: 'the disconnect counted' });
      const exported = new Set((await scrape(server)).samples.map(s => s.name.replace(/_total$/, '')));
      const queried = dashboardMetrics();
      assert.ok(queried.length >= 20, `the dashboard queries ${queried.length} metrics`);
      const missing = queried.filter(name => !exported.has(name.replace(/_total$/, '')));
      assert.deepEqual(missing, [], 'dashboard metrics the node does not export');
    } finally {
      closeAll(client);
    }
  }));
});

describe('ping/pong durations', () => {
  let server;
  before(async () => {
    server = await startServer({ prometheus: { enabled: true }, client: { ping_interval: '1s', pong_timeout: '800ms' } });
  });
  after(async () => { if (server) await server.stop(); });

  test('each pong a client sends back is timed, by transport', tracked(() => server, async () => {
    const client = newClient(server, PROTOCOLS[0], { token: connToken(server, 'metrics-ping') });
    try {
      await connectClient(client);
      let pongs = 0;
      await waitFor(async () => {
        pongs = total(await scrape(server), 'centrifugo_client_ping_pong_duration_seconds_count', { transport: 'websocket' });
        return pongs >= 2;
      }, { timeoutMs: 6000, intervalMs: 250, what: 'two timed ping/pongs' });
      const scraped = await scrape(server);
      assert.equal(scraped.types.centrifugo_client_ping_pong_duration_seconds, 'histogram');
      const seconds = total(scraped, 'centrifugo_client_ping_pong_duration_seconds_sum', { transport: 'websocket' });
      assert.ok(seconds > 0 && seconds < pongs * 0.8, `${seconds} s over ${pongs} pongs, each under pong_timeout`);
      assert.equal(total(scraped, 'centrifugo_node_action_count', { action: 'remove_client' }), 0);
    } finally {
      closeAll(client);
    }
    await waitFor(async () => total(await scrape(server), 'centrifugo_node_action_count', { action: 'remove_client' }) === 1,
      { what: 'the closed client counted as removed' });
  }));
});

describe('prometheus on the internal port', () => {
  let server;
  before(async () => {
    const internal = await freePort();
    server = await startServer({
      prometheus: { enabled: true, handler_prefix: '/prom/' },
      http_server: { internal_port: String(internal) },
    });
  });
  after(async () => { if (server) await server.stop(); });

  test('is served only there, at the configured path', tracked(() => server, async () => {
    const scraped = await scrape(server, '/prom');
    assert.equal(scraped.types.centrifugo_node_num_clients, 'gauge');
    const external = await fetch(`http://127.0.0.1:${server.port}/prom`);
    await external.arrayBuffer();
    assert.equal(external.status, 404);
    const slash = await fetch(`http://127.0.0.1:${server.apiPort}/prom/`);
    await slash.arrayBuffer();
    assert.equal(slash.status, 404, 'an exact path, as Centrifugo serves it');
  }));
});
