// Asynchronous consumers (issue 18): a backend writes 10k publish commands into a PostgreSQL
// outbox, Redis Streams, NATS JetStream or Kafka while npm `centrifuge` subscribers (JSON and
// Protobuf) listen on four channels. The broker is killed (SIGKILL) and restarted mid-run, and
// a malformed command sits among the good ones. Every subscriber must receive every
// publication exactly once, in its channel's order; the malformed one is skipped and counted.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';

import {
  PROTOCOLS, startServer, tracked, newClient, connectClient, subscribeAndWait, connToken,
  waitFor, closeAll, uid, delay, api,
} from '../harness.mjs';
import { Postgres, Redis, Nats, Kafka } from '../infra.mjs';
import { metricValue } from '../faults.mjs';

const TOTAL = 10000;
const CHUNK = 1000;
const CHANNELS = 4;
/** The broker is killed once this many commands were written. */
const RESTART_AFTER = 3000;
/** The malformed command goes in once this many were written. */
const MALFORMED_AFTER = 5000;

const channelOf = (prefix, i) => `news:${prefix}-c${i % CHANNELS}`;

/** Retries `write` until the broker takes it (it is away while restarting). */
async function retrying(write, what) {
  const deadline = Date.now() + 60000;
  for (;;) {
    try {
      return await write();
    } catch (e) {
      if (Date.now() > deadline) throw new Error(`${what}: ${e.message}`);
      await delay(200);
    }
  }
}

/**
 * Runs one consumer scenario: subscribers on every channel, the backend writing TOTAL commands
 * in chunks with a broker restart and a malformed command along the way, then the checks.
 */
async function scenario({ server, prefix, consumer, writeChunk, writeMalformed, restartBroker, restartSeen = true }) {
  const clients = [];
  const received = PROTOCOLS.map(() => Array.from({ length: CHANNELS }, () => []));
  for (const [p, proto] of PROTOCOLS.entries()) {
    const client = newClient(server, proto, { token: connToken(server, uid('u-')) });
    await connectClient(client);
    clients.push(client);
    for (let c = 0; c < CHANNELS; c++) {
      const sub = client.newSubscription(channelOf(prefix, c));
      sub.on('publication', ctx => received[p][c].push(proto.decode(ctx.data).i));
      await subscribeAndWait(sub);
    }
  }
  const started = Date.now();
  for (let from = 0; from < TOTAL; from += CHUNK) {
    await retrying(() => writeChunk(from, from + CHUNK), `writing commands ${from}..${from + CHUNK}`);
    if (from + CHUNK === RESTART_AFTER) await restartBroker();
    if (from + CHUNK === MALFORMED_AFTER) await retrying(writeMalformed, 'writing the malformed command');
  }
  const perChannel = TOTAL / CHANNELS;
  await waitFor(() => received.every(byChannel => byChannel.every(list => list.length >= perChannel)), {
    timeoutMs: 120000, intervalMs: 100,
    what: `every publication at every subscriber (${JSON.stringify(received.map(b => b.map(l => l.length)))})`,
  });
  const seconds = (Date.now() - started) / 1000;
  await delay(300); // a late duplicate would arrive now
  for (const [p, proto] of PROTOCOLS.entries()) {
    for (let c = 0; c < CHANNELS; c++) {
      const expected = Array.from({ length: perChannel }, (_, k) => k * CHANNELS + c);
      assert.deepEqual(received[p][c], expected, `${proto.name} subscriber, channel ${c}: each publication once, in order`);
    }
  }
  const skipped = await metricValue(server, 'spinwire_consumers_messages_skipped_total', { consumer_name: consumer, reason: 'malformed' });
  assert.equal(skipped, 1, 'the malformed command is skipped and counted');
  const processed = await metricValue(server, 'centrifugo_consumers_messages_processed_total', { consumer_name: consumer });
  assert.ok(processed >= TOTAL + 1, `processed ${processed}`);
  const errors = await metricValue(server, 'centrifugo_consumers_errors_total', { consumer_name: consumer });
  if (restartSeen) assert.ok(errors > 0, 'the consumer saw the broker go away');
  closeAll(...clients);
  console.log(`# ${consumer}: ${TOTAL} commands through a broker restart in ${seconds.toFixed(1)} s (${processed} processed, ${errors} errors)`);
}

const publishCommand = (prefix, i) => ({
  channel: channelOf(prefix, i), data: { i }, idempotency_key: `${prefix}-${i}`,
});

/**
 * Publication data mode: `send(channels, key)` puts one message whose body is the data and
 * whose headers (fields) name the channels, an idempotency key and a tag. Sent twice with the
 * same key, it reaches each channel's subscriber once, with its tag.
 */
async function publicationDataMode(server, send) {
  const channels = [`news:${uid('pdm-a-')}`, `news:${uid('pdm-b-')}`];
  const client = newClient(server, PROTOCOLS[0], { token: connToken(server, uid('u-')) });
  await connectClient(client);
  const received = channels.map(() => []);
  for (const [i, channel] of channels.entries()) {
    const sub = client.newSubscription(channel);
    sub.on('publication', ctx => received[i].push({ data: ctx.data, tags: ctx.tags }));
    await subscribeAndWait(sub);
  }
  const key = uid('key-');
  await send(channels.join(','), key);
  await send(channels.join(','), key);
  await waitFor(() => received.every(list => list.length >= 1), { timeoutMs: 20000, what: 'the publication on both channels' });
  await delay(500); // the repeat would arrive by now
  for (const list of received) assert.deepEqual(list, [{ data: { x: 1 }, tags: { color: 'red' } }]);
  closeAll(client);
}

describe('consumers: PostgreSQL outbox', () => {
  let pg, server;
  before(async () => {
    pg = await Postgres.start({ durable: true });
    pg.sql(`CREATE TABLE outbox (
        id BIGSERIAL PRIMARY KEY, method text NOT NULL, payload JSONB NOT NULL,
        partition INTEGER NOT NULL DEFAULT 0, created_at TIMESTAMPTZ NOT NULL DEFAULT now());
      CREATE FUNCTION outbox_notify() RETURNS trigger AS $$
        BEGIN PERFORM pg_notify('outbox_wake', NEW.partition::text); RETURN NEW; END $$ LANGUAGE plpgsql;
      CREATE TRIGGER outbox_notify AFTER INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION outbox_notify();`);
    server = await startServer({
      prometheus: { enabled: true },
      consumers: [{
        name: 'outbox', type: 'postgresql', enabled: true,
        postgresql: {
          dsn: pg.dsn, outbox_table_name: 'outbox', num_partitions: 2,
          partition_notification_channel: 'outbox_wake', partition_poll_interval: '1s',
        },
      }],
    });
  });
  after(async () => {
    if (server) await server.stop();
    if (pg) await pg.stop();
  });

  test('10k outbox rows reach every subscriber once, in order, through a PostgreSQL restart', tracked(() => server, async () => {
    const prefix = uid('pg');
    await scenario({
      server, prefix, consumer: 'outbox',
      writeChunk: (from, to) => pg.sql(`INSERT INTO outbox (method, payload, partition)
        SELECT 'publish', jsonb_build_object('channel', 'news:${prefix}-c' || (i % ${CHANNELS}),
          'data', jsonb_build_object('i', i), 'idempotency_key', '${prefix}-' || i), (i % ${CHANNELS}) % 2
        FROM generate_series(${from}, ${to - 1}) AS i`),
      writeMalformed: () => pg.sql(`INSERT INTO outbox (method, payload) VALUES ('publish', '{"channel": 5}')`),
      restartBroker: async () => {
        await pg.kill();
        await delay(500);
        await retrying(() => pg.restart(), 'restarting PostgreSQL');
      },
    });
    assert.equal(pg.sql('SELECT count(*) FROM outbox'), '0', 'every executed row deleted');
  }));
});

/** `XADD key * field value …` for every entry, through one `redis-cli --pipe`. */
function redisPipe(port, entries) {
  const bulk = s => `$${Buffer.byteLength(s)}\r\n${s}\r\n`;
  const text = entries.map(([key, fields]) => {
    const args = ['XADD', key, '*', ...fields];
    return `*${args.length}\r\n${args.map(bulk).join('')}`;
  }).join('');
  const out = spawnSync('redis-cli', ['-p', String(port), '--pipe'], { input: text, encoding: 'utf8', timeout: 20000 });
  if (out.status !== 0 || !/errors: 0/.test(out.stdout)) throw new Error(`redis-cli --pipe: ${out.stdout}${out.stderr}`);
}

describe('consumers: Redis Streams', () => {
  let redis, server;
  const ghostChannel = `chat:${uid('reclaimed-')}`;
  before(async () => {
    redis = await Redis.start(['--appendonly', 'yes', '--appendfsync', 'always']);
    // An entry another member (a node that died) read and never acknowledged.
    const cli = (...args) => spawnSync('redis-cli', ['-p', String(redis.port), ...args], { encoding: 'utf8' }).stdout;
    cli('XGROUP', 'CREATE', 'ghosted', 'spinwire', '$', 'MKSTREAM');
    cli('XADD', 'ghosted', '*', 'method', 'publish', 'payload', JSON.stringify({ channel: ghostChannel, data: { reclaimed: true } }));
    cli('XREADGROUP', 'GROUP', 'spinwire', 'dead-node', 'COUNT', '1', 'STREAMS', 'ghosted', '>');
    server = await startServer({
      prometheus: { enabled: true },
      consumers: [{
        name: 'streams', type: 'redis_stream', enabled: true,
        redis_stream: { address: redis.address, streams: ['cmds0', 'cmds1'], consumer_group: 'spinwire' },
      }, {
        name: 'streams_reclaim', type: 'redis_stream', enabled: true,
        redis_stream: { address: redis.address, streams: ['ghosted'], consumer_group: 'spinwire', visibility_timeout: '1s' },
      }, {
        name: 'streams_data', type: 'redis_stream', enabled: true,
        redis_stream: {
          address: redis.address, streams: ['data'], consumer_group: 'spinwire', publication_data_mode: { enabled: true },
        },
      }],
    });
  });
  after(async () => {
    if (server) await server.stop();
    if (redis) await redis.stop();
  });

  test('10k stream entries reach every subscriber once, in order, through a Redis restart', tracked(() => server, async () => {
    const prefix = uid('rs');
    // The group is created at `$` when the consumer starts: wait for it.
    await waitFor(() => {
      try { return spawnSync('redis-cli', ['-p', String(redis.port), 'XINFO', 'GROUPS', 'cmds1'], { encoding: 'utf8' }).stdout.includes('spinwire'); } catch { return false; }
    }, { timeoutMs: 10000, what: 'the consumer groups' });
    await scenario({
      server, prefix, consumer: 'streams',
      writeChunk: async (from, to) => {
        const entries = [];
        for (let i = from; i < to; i++) {
          entries.push([`cmds${(i % CHANNELS) % 2}`, ['method', 'publish', 'payload', JSON.stringify(publishCommand(prefix, i))]]);
        }
        redisPipe(redis.port, entries);
      },
      writeMalformed: async () => redisPipe(redis.port, [['cmds0', ['method', 'publish', 'payload', '{"channel": 5}']]]),
      restartBroker: async () => {
        await redis.kill();
        await delay(500);
        await redis.restart();
      },
    });
  }));

  test('an entry a dead member left pending is reclaimed after visibility_timeout and executed', tracked(() => server, async () => {
    let publications = [];
    await waitFor(async () => {
      publications = (await api(server, 'history', { channel: ghostChannel, limit: 10 })).publications || [];
      return publications.length > 0;
    }, { timeoutMs: 20000, intervalMs: 200, what: 'the reclaimed entry executed' });
    assert.deepEqual(publications.map(p => p.data), [{ reclaimed: true }]);
    await waitFor(() => spawnSync('redis-cli', ['-p', String(redis.port), 'XPENDING', 'ghosted', 'spinwire'], { encoding: 'utf8' })
      .stdout.trim().startsWith('0'), { timeoutMs: 5000, what: 'the entry acknowledged' });
  }));

  test('publication data mode: the entry is the data, its fields the channels, key and tags', tracked(() => server, async () => {
    await publicationDataMode(server, async (channels, key) => redisPipe(redis.port, [['data', [
      'payload', '{"x":1}', 'centrifugo-channels', channels, 'centrifugo-idempotency-key', key, 'centrifugo-tag-color', 'red',
    ]]]));
  }));
});

describe('consumers: NATS JetStream', () => {
  let nats, server, nc;
  before(async () => {
    nats = await Nats.start({ jetstream: true });
    const { connect } = await import('nats');
    nc = await connect({ servers: nats.url, maxReconnectAttempts: -1, reconnectTimeWait: 100 });
    const jsm = await nc.jetstreamManager();
    await jsm.streams.add({ name: 'CMDS', subjects: ['cmds.>'], storage: 'file' });
    await jsm.streams.add({ name: 'DATA', subjects: ['data.>'], storage: 'file' });
    server = await startServer({
      prometheus: { enabled: true },
      consumers: [{
        name: 'jetstream', type: 'nats_jetstream', enabled: true,
        nats_jetstream: {
          url: nats.url, stream_name: 'CMDS', subjects: ['cmds.>'], durable_consumer_name: 'spinwire',
          deliver_policy: 'all',
        },
      }, {
        name: 'jetstream_data', type: 'nats_jetstream', enabled: true,
        nats_jetstream: {
          url: nats.url, stream_name: 'DATA', durable_consumer_name: 'spinwire_data', publication_data_mode: { enabled: true },
        },
      }],
    });
  });
  after(async () => {
    if (server) await server.stop();
    if (nc) await nc.close().catch(() => {});
    if (nats) await nats.stop();
  });

  test('10k JetStream messages reach every subscriber once, in order, through a NATS restart', tracked(() => server, async () => {
    const prefix = uid('js');
    const { headers } = await import('nats');
    const js = nc.jetstream();
    const publish = (subject, body, id, method = 'publish') => {
      const h = headers();
      h.set('centrifugo-method', method);
      // JetStream drops a message it already stored under this id (a retried chunk).
      return js.publish(subject, new TextEncoder().encode(body), { headers: h, msgID: id, timeout: 2000 });
    };
    await scenario({
      server, prefix, consumer: 'jetstream',
      writeChunk: async (from, to) => {
        for (let batch = from; batch < to; batch += 100) {
          const acks = [];
          for (let i = batch; i < Math.min(batch + 100, to); i++) {
            acks.push(publish(`cmds.c${i % CHANNELS}`, JSON.stringify(publishCommand(prefix, i)), `${prefix}-${i}`));
          }
          await Promise.all(acks);
        }
      },
      writeMalformed: () => publish('cmds.c0', '{"channel": 5}', `${prefix}-malformed`),
      restartBroker: async () => {
        await nats.kill();
        await delay(500);
        await nats.restart();
      },
      // The NATS client reconnects under the consumer, which may see no error at all.
      restartSeen: false,
    });
  }));

  test('publication data mode: the message is the data, its headers the channels, key and tags', tracked(() => server, async () => {
    const { headers } = await import('nats');
    const js = nc.jetstream();
    await publicationDataMode(server, async (channels, key) => {
      const h = headers();
      h.set('centrifugo-channels', channels);
      h.set('centrifugo-idempotency-key', key);
      h.set('centrifugo-tag-color', 'red');
      await js.publish('data.x', new TextEncoder().encode('{"x":1}'), { headers: h });
    });
  }));
});

describe('consumers: Kafka', () => {
  let kafka, server, producer, admin;
  before(async () => {
    kafka = await Kafka.start();
    const { Kafka: KafkaJs, logLevel } = await import('kafkajs');
    const client = new KafkaJs({
      clientId: 'interop-backend', brokers: [kafka.bootstrap], logLevel: logLevel.NOTHING,
      retry: { retries: 30, initialRetryTime: 100, maxRetryTime: 1000 },
    });
    admin = client.admin();
    await admin.connect();
    await admin.createTopics({ topics: [{ topic: 'cmds', numPartitions: 3 }, { topic: 'data', numPartitions: 1 }], waitForLeaders: true });
    producer = client.producer({ idempotent: true, maxInFlightRequests: 1 });
    await producer.connect();
    server = await startServer({
      prometheus: { enabled: true },
      consumers: [{
        name: 'kafka', type: 'kafka', enabled: true,
        kafka: { brokers: [kafka.bootstrap], topics: ['cmds'], consumer_group: 'spinwire' },
      }, {
        name: 'kafka_data', type: 'kafka', enabled: true,
        kafka: { brokers: [kafka.bootstrap], topics: ['data'], consumer_group: 'spinwire_data', publication_data_mode: { enabled: true } },
      }],
    });
  });
  after(async () => {
    if (server) await server.stop();
    if (producer) await producer.disconnect().catch(() => {});
    if (admin) await admin.disconnect().catch(() => {});
    if (kafka) await kafka.stop();
  });

  test('10k Kafka records reach every subscriber once, in order, through a broker restart', tracked(() => server, async () => {
    const prefix = uid('kf');
    // The channel is the key: one channel's records share a partition, whose order holds.
    const record = (i, value) => ({
      key: channelOf(prefix, i), value, headers: { 'centrifugo-method': 'publish' },
    });
    await scenario({
      server, prefix, consumer: 'kafka',
      writeChunk: (from, to) => producer.send({
        topic: 'cmds', acks: -1,
        messages: Array.from({ length: to - from }, (_, k) => record(from + k, JSON.stringify(publishCommand(prefix, from + k)))),
      }),
      writeMalformed: () => producer.send({ topic: 'cmds', acks: -1, messages: [record(0, '{"channel": 5}')] }),
      restartBroker: async () => {
        await kafka.kill();
        await delay(500);
        await kafka.restart();
      },
    });
  }));

  test('publication data mode: the record is the data, its headers the channels, key and tags', tracked(() => server, async () => {
    await publicationDataMode(server, (channels, key) => producer.send({
      topic: 'data', acks: -1,
      messages: [{ value: '{"x":1}', headers: { 'centrifugo-channels': channels, 'centrifugo-idempotency-key': key, 'centrifugo-tag-color': 'red' } }],
    }));
  }));
});

/**
 * A clean shutdown acknowledges exactly what it executed: node A consumes part of a backlog
 * and gets SIGTERM, node B (same config) consumes the rest; the channel's history (in Redis,
 * which both share) then holds every command once, in order. No idempotency keys: a command
 * executed by A and not acknowledged would show up twice.
 */
describe('consumers: a clean shutdown acknowledges what it executed', () => {
  // Enough that node A is still busy (with records fetched ahead of its worker) when stopped.
  const COMMANDS = 20000;
  let redis, pg, kafka;
  before(async () => {
    redis = await Redis.start();
    pg = await Postgres.start();
    kafka = await Kafka.start();
  });
  after(async () => {
    if (kafka) await kafka.stop();
    if (pg) await pg.stop();
    if (redis) await redis.stop();
  });

  async function drainAcrossRestart(consumer) {
    const channel = `drain:${uid('ch-')}`;
    const config = {
      prometheus: { enabled: true },
      engine: { type: 'redis', redis: { address: redis.address, prefix: uid('drain') } },
      channel: { namespaces: [{ name: 'drain', history_size: COMMANDS + 10, history_ttl: '600s' }] },
      consumers: [await consumer(channel)],
    };
    const a = await startServer(config);
    await waitFor(async () => (await metricValue(a, 'centrifugo_consumers_messages_processed_total')) >= 300, {
      timeoutMs: 20000, intervalMs: 20, what: 'node A under way',
    });
    a.signal('SIGTERM');
    await waitFor(() => a.exited !== null, { timeoutMs: 20000, what: 'node A to stop' });
    await a.stop();
    const b = await startServer(config, { secret: a.secret, apiKey: a.apiKey });
    try {
      let publications = [];
      await waitFor(async () => {
        publications = (await api(b, 'history', { channel, limit: COMMANDS + 10 })).publications || [];
        return publications.length >= COMMANDS;
      }, { timeoutMs: 60000, intervalMs: 200, what: 'every command in the history' });
      await delay(500);
      publications = (await api(b, 'history', { channel, limit: COMMANDS + 10 })).publications || [];
      assert.deepEqual(publications.map(p => p.data.i), Array.from({ length: COMMANDS }, (_, i) => i), 'each once, in order');
    } finally {
      await b.stop();
    }
  }

  test('PostgreSQL outbox', tracked(() => null, async () => {
    const table = `drain_${uid('t').replace(/-/g, '')}`;
    await drainAcrossRestart(async channel => {
      pg.sql(`CREATE TABLE ${table} (id BIGSERIAL PRIMARY KEY, method text NOT NULL, payload JSONB NOT NULL, partition INTEGER NOT NULL DEFAULT 0);
        INSERT INTO ${table} (method, payload) SELECT 'publish', jsonb_build_object('channel', '${channel}', 'data', jsonb_build_object('i', i))
        FROM generate_series(0, ${COMMANDS - 1}) AS i`);
      return { name: 'outbox', type: 'postgresql', enabled: true, postgresql: { dsn: pg.dsn, outbox_table_name: table } };
    });
  }));

  test('Kafka', tracked(() => null, async () => {
    const { Kafka: KafkaJs, logLevel } = await import('kafkajs');
    const client = new KafkaJs({ clientId: 'drain', brokers: [kafka.bootstrap], logLevel: logLevel.NOTHING });
    const producer = client.producer();
    await producer.connect();
    const topic = uid('drain-');
    try {
      await drainAcrossRestart(async channel => {
        for (let from = 0; from < COMMANDS; from += 5000) {
          const messages = Array.from({ length: 5000 }, (_, k) => ({
            value: JSON.stringify({ channel, data: { i: from + k } }), headers: { 'centrifugo-method': 'publish' },
          }));
          await producer.send({ topic, messages, acks: -1 });
        }
        return { name: 'kafka', type: 'kafka', enabled: true, kafka: { brokers: [kafka.bootstrap], topics: [topic], consumer_group: topic } };
      });
    } finally {
      await producer.disconnect();
    }
  }));
});
